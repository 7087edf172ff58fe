/*
 * ob_svg.h - the latency picture of a run: latency by percentile (x: the
 * percentile on a 1/(1-p) log axis up to 99.99 %, y: milliseconds on a log
 * axis) of POST -> settled, POST -> 202 and created_at -> settled_at, as a
 * self-contained SVG file with its axes, legend and the run's parameters in
 * the title.
 */
#pragma once

#include "ob_report.h"

/* Writes the picture to path. Returns 0 or OB_EXIT_INFRA (reported). */
int ob_svg_write(const char *path, const ob_report *r);
