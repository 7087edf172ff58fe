/*
 * cm_auth.h - bearer tokens with scopes for the HTTP API.
 *
 * The token file holds one token per line as
 *     <sha256-hex-of-token> <name> <scope>[,<scope>...]
 * with '#' comments and blank lines allowed; plaintext tokens are never
 * stored. A presented token is hashed (SHA-256) and its digest compared with
 * every entry's in constant time, so neither the time taken nor an early exit
 * tells how much of a guess was right.
 *
 * A cm_auth holds the current table. cm_auth_load() parses a whole file
 * first and swaps the new table in only if all of it is good; readers (HTTP
 * worker threads) see either the old table or the new one, never a mix.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#define CM_AUTH_NAME_MAX 64
#define CM_AUTH_SCOPE_MAX 64
/* "ot_" + 43 base64url characters (32 random bytes) + NUL. */
#define CM_AUTH_TOKEN_LEN 47

typedef struct cm_auth cm_auth;

typedef enum {
    CM_AUTH_OK,        /* known token with the scope */
    CM_AUTH_UNKNOWN,   /* no such token (or none presented): 401 */
    CM_AUTH_FORBIDDEN, /* known token without the scope: 403 */
} cm_auth_result;

/* An empty table (every token unknown). Returns 0 or -ENOMEM. */
int cm_auth_new(cm_auth **ret);
void cm_auth_free(cm_auth *a);

/* Reads path and, if every line is good, installs it as the table and sets
 * *count to its number of tokens. Refuses a file writable by group or others.
 * On failure keeps the current table and returns a negative errno with a
 * message in err naming path (and line: "tokens:3: ..."). */
int cm_auth_load(cm_auth *a, const char *path, size_t *count, char *err, size_t errlen);

/* Parses text (the contents of a token file named path in messages) the same
 * way, for tests. */
int cm_auth_load_text(cm_auth *a, const char *path, const char *text, size_t *count, char *err,
                      size_t errlen);

/* Looks token up (len bytes, need not be NUL-terminated). On CM_AUTH_OK and
 * CM_AUTH_FORBIDDEN copies the token's name into name. scope NULL: any known
 * token is OK. */
cm_auth_result cm_auth_check(cm_auth *a, const char *token, size_t len, const char *scope,
                             char *name, size_t namelen);

/* Splits an Authorization header value "Bearer <token>" (scheme matched
 * case-insensitively, RFC 6750 b64token syntax). Returns true with *token and
 * *len set, or false for another scheme or a malformed value. */
bool cm_auth_parse_bearer(const char *value, const char **token, size_t *len);

/* True for a well-formed scope name: "word:word", lowercase letters, digits,
 * '-' and '_' (e.g. orders:write). */
bool cm_auth_scope_valid(const char *s, size_t len);
/* True for a token name: 1 to CM_AUTH_NAME_MAX-1 of [A-Za-z0-9._-]. */
bool cm_auth_name_valid(const char *s, size_t len);

/* Lowercase hex SHA-256 of len bytes of token into out (65 bytes). Returns 0
 * or -EIO. */
int cm_auth_hash_hex(const char *token, size_t len, char out[65]);

/* A new random token ("ot_" + 32 bytes from getrandom, base64url) into out.
 * Returns 0 or a negative errno. */
int cm_auth_token_new(char out[CM_AUTH_TOKEN_LEN]);
