/*
 * ob_svg.c - see ob_svg.h.
 */
#include "ob_svg.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define W 960
#define H 700
#define LEFT 84
#define RIGHT 36
#define TOP 92
#define BOTTOM 164 /* x labels, the axis title and the legend below the plot */
#define POINTS 480
#define ARROW "\xe2\x86\x92" /* U+2192 in UTF-8 */
#define MIN_NS 10000.0       /* 0.01 ms: the lowest the y axis goes */

typedef struct {
    FILE *f;
    double xmax;     /* log10(1/(1-p)) at the right edge */
    double ylo, yhi; /* log10(ms) at the bottom and the top */
} plot;

typedef struct {
    const ob_series *s;
    const char *name, *color, *dash;
    double width;
} line;

static double px(const plot *p, double x)
{
    return LEFT + x / p->xmax * (W - LEFT - RIGHT);
}

static double py(const plot *p, double ms)
{
    double l = log10(ms < MIN_NS / 1e6 ? MIN_NS / 1e6 : ms);
    return TOP + (p->yhi - l) / (p->yhi - p->ylo) * (H - TOP - BOTTOM);
}

/* Text with &, <, > and quotes escaped. */
static void esc(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&':
            fputs("&amp;", f);
            break;
        case '<':
            fputs("&lt;", f);
            break;
        case '>':
            fputs("&gt;", f);
            break;
        case '"':
            fputs("&quot;", f);
            break;
        default:
            fputc(*s, f);
        }
    }
}

static void text(FILE *f, double x, double y, const char *anchor, int size, const char *weight,
                 const char *s)
{
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"%s\" font-size=\"%d\"%s%s%s>", x, y,
            anchor, size, weight ? " font-weight=\"" : "", weight ? weight : "",
            weight ? "\"" : "");
    esc(f, s);
    fputs("</text>\n", f);
}

static void x_axis(const plot *p)
{
    static const struct {
        double x;
        const char *label;
    } ticks[] = {{0, "0%"}, {0.30103, "50%"}, {1, "90%"}, {2, "99%"}, {3, "99.9%"}, {4, "99.99%"}};
    size_t i;

    for (i = 0; i < sizeof(ticks) / sizeof(ticks[0]); i++) {
        double x = px(p, ticks[i].x);
        if (ticks[i].x > p->xmax + 1e-9)
            break;
        fprintf(p->f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#ddd\"/>\n", x,
                TOP, x, H - BOTTOM);
        text(p->f, x, H - BOTTOM + 20, "middle", 13, NULL, ticks[i].label);
    }
    text(p->f, (LEFT + W - RIGHT) / 2.0, H - BOTTOM + 44, "middle", 14, NULL,
         "percentile of orders (axis: log of 1/(1-p))");
}

static void y_axis(const plot *p)
{
    static const double steps[] = {1, 2, 5};
    char label[32];
    int d;
    size_t i;

    for (d = (int)p->ylo; d <= (int)p->yhi; d++)
        for (i = 0; i < 3; i++) {
            double ms = steps[i] * pow(10, d), y;
            if (log10(ms) > p->yhi + 1e-9 || log10(ms) < p->ylo - 1e-9)
                continue;
            y = py(p, ms);
            fprintf(p->f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"%s\"/>\n",
                    LEFT, y, W - RIGHT, y, i == 0 ? "#ccc" : "#eee");
            snprintf(label, sizeof(label), "%g", ms);
            text(p->f, LEFT - 8, y + 4, "end", 13, NULL, label);
        }
    fprintf(p->f,
            "<text x=\"20\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"14\" "
            "transform=\"rotate(-90 20 %.1f)\">latency, ms (log scale)</text>\n",
            (TOP + H - BOTTOM) / 2.0, (TOP + H - BOTTOM) / 2.0);
    fprintf(p->f,
            "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#888\"/>\n",
            LEFT, TOP, W - LEFT - RIGHT, H - TOP - BOTTOM);
}

static void curve(const plot *p, const line *l)
{
    int k;

    if (l->s->n == 0)
        return;
    fprintf(p->f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"%.1f\"%s%s%s points=\"",
            l->color, l->width, l->dash ? " stroke-dasharray=\"" : "", l->dash ? l->dash : "",
            l->dash ? "\"" : "");
    for (k = 0; k <= POINTS; k++) {
        double x = p->xmax * k / POINTS, pct = 100.0 * (1.0 - pow(10, -x));
        double ms = (double)ob_series_pct(l->s, pct) / 1e6;
        fprintf(p->f, "%s%.1f,%.1f", k ? " " : "", px(p, x), py(p, ms));
    }
    fputs("\"/>\n", p->f);
}

static void legend(const plot *p, const line *lines, size_t n)
{
    char s[200];
    size_t i;
    double y = H - BOTTOM + 84;

    fprintf(p->f,
            "<rect x=\"%d\" y=\"%d\" width=\"780\" height=\"%zu\" fill=\"white\" "
            "fill-opacity=\"0.85\" stroke=\"#bbb\"/>\n",
            LEFT, H - BOTTOM + 62, 12 + 22 * n);
    for (i = 0; i < n; i++, y += 22) {
        const ob_series *sr = lines[i].s;
        fprintf(p->f,
                "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"%s\" "
                "stroke-width=\"%.1f\"%s%s%s/>\n",
                LEFT + 22, y - 4, LEFT + 52, y - 4, lines[i].color, lines[i].width,
                lines[i].dash ? " stroke-dasharray=\"" : "", lines[i].dash ? lines[i].dash : "",
                lines[i].dash ? "\"" : "");
        if (sr->n)
            snprintf(s, sizeof(s), "%s: p50 %.2f, p99 %.2f, p99.9 %.2f, max %.2f ms (%zu)",
                     lines[i].name, (double)ob_series_pct(sr, 50) / 1e6,
                     (double)ob_series_pct(sr, 99) / 1e6, (double)ob_series_pct(sr, 99.9) / 1e6,
                     (double)ob_series_pct(sr, 100) / 1e6, sr->n);
        else
            snprintf(s, sizeof(s), "%s: no orders", lines[i].name);
        text(p->f, LEFT + 60, y, "start", 13, NULL, s);
    }
}

/* The axes' ranges from the data. */
static void ranges(plot *p, const line *lines, size_t n)
{
    double lo = INFINITY, hi = 0, count = 0;
    size_t i;

    for (i = 0; i < n; i++) {
        const ob_series *s = lines[i].s;
        if (s->n == 0)
            continue;
        lo = fmin(lo, fmax((double)s->v[0], MIN_NS));
        hi = fmax(hi, (double)s->v[s->n - 1]);
        count = fmax(count, (double)s->n);
    }
    if (hi <= 0) {
        lo = 1e6;
        hi = 1e7;
    }
    p->ylo = floor(log10(lo / 1e6));
    p->yhi = ceil(log10(fmax(hi, lo * 1.0001) / 1e6));
    if (p->yhi <= p->ylo)
        p->yhi = p->ylo + 1;
    p->xmax = fmin(4, fmax(2, ceil(log10(fmax(count, 1)))));
}

static void titles(FILE *f, const ob_report *r)
{
    const ob_run *run = r->run;
    int64_t total = ob_report_cpu_total_us(r->procs);
    char mode[128], s[320];

    ob_report_mode(run, mode, sizeof(mode));
    snprintf(s, sizeof(s), "orders-bench: latency by percentile, %s", mode);
    text(f, W / 2.0, 30, "middle", 17, "bold", s);
    snprintf(s, sizeof(s),
             "run %s, %s  |  POST %.1f/s, settled %.1f/s  |  CPU of all processes %.2f ms per "
             "settled order",
             run->run_id, r->started_at, r->res->post_per_s, r->res->settled_per_s,
             r->res->settled > 0 ? (double)total / (double)r->res->settled / 1000.0 : 0.0);
    text(f, W / 2.0, 54, "middle", 13, NULL, s);
    snprintf(s, sizeof(s),
             "%lld settled (%lld confirmed, %lld rejected), lost %lld, duplicated %lld, POST "
             "failures %lld; latency from each order's %s send",
             (long long)r->res->settled, (long long)run->confirmed, (long long)run->rejected,
             (long long)ob_run_lost(run), (long long)ob_run_duplicated(run), (long long)run->failed,
             run->o->rate > 0 ? "intended" : "actual");
    text(f, W / 2.0, 74, "middle", 13, NULL, s);
}

int ob_svg_write(const char *path, const ob_report *r)
{
    const line lines[] = {
        {&r->res->settle, "POST " ARROW " settled", "#1f5fbf", NULL, 2.5},
        {&r->res->post, "POST " ARROW " 202", "#e6730f", NULL, 2.5},
        {&r->res->saga, "created_at " ARROW " settled_at (server clock)", "#2e9e44", "6 4", 1.6},
    };
    plot p = {0};
    int err;

    if (!(p.f = fopen(path, "we"))) {
        ob_err("could not write %s: %s", path, strerror(errno));
        return OB_EXIT_INFRA;
    }
    ranges(&p, lines, 3);
    fprintf(p.f,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
            "viewBox=\"0 0 %d %d\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            W, H, W, H);
    titles(p.f, r);
    x_axis(&p);
    y_axis(&p);
    curve(&p, &lines[2]);
    curve(&p, &lines[1]);
    curve(&p, &lines[0]);
    legend(&p, lines, 3);
    fputs("</svg>\n", p.f);
    err = ferror(p.f);
    if (fclose(p.f) != 0 || err) {
        ob_err("could not write %s", path);
        return OB_EXIT_INFRA;
    }
    return 0;
}
