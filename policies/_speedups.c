/* HTML to visible text, and word splitting, for policies.message.
 *
 * A 100 KB newsletter costs a dozen regex passes and thousands of matches in Python; here each
 * pass is one C loop. Every pass is written to give exactly what its regex gave (the reference
 * in tests/policies/speedups_reference.py, which the tests compare against on a corpus and on
 * generated input): same case rules (re.IGNORECASE's, with its four non-ASCII equivalents),
 * same \s, \w and \b (CPython's Unicode tables, which sre uses), same leftmost-first choices.
 *
 * Pure: no I/O, no global state beyond the entity tables read from the html module at import.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <wchar.h>

/* wmemchr scans code points when wchar_t is 32 bits wide (glibc: vectorised) */
#if defined(__WCHAR_MAX__) && __WCHAR_MAX__ > 0xffff && __SIZEOF_WCHAR_T__ == 4
#define HAVE_WIDE_SEARCH 1
#endif

/* --- buffers of code points ------------------------------------------------------------ */

typedef struct {
    Py_UCS4 *p;
    Py_ssize_t n;
    Py_ssize_t cap;
} Buf;

static int buf_init(Buf *b, Py_ssize_t cap) {
    if (cap < 16) cap = 16;
    b->p = PyMem_Malloc(sizeof(Py_UCS4) * (size_t)cap);
    b->n = 0;
    b->cap = cap;
    if (b->p == NULL) { PyErr_NoMemory(); return -1; }
    return 0;
}

static void buf_free(Buf *b) {
    PyMem_Free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

static int buf_reserve(Buf *b, Py_ssize_t extra) {
    if (b->n + extra <= b->cap) return 0;
    Py_ssize_t cap = b->cap * 2;
    if (cap < b->n + extra) cap = b->n + extra;
    Py_UCS4 *p = PyMem_Realloc(b->p, sizeof(Py_UCS4) * (size_t)cap);
    if (p == NULL) { PyErr_NoMemory(); return -1; }
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int buf_put(Buf *b, Py_UCS4 c) {
    if (b->n == b->cap && buf_reserve(b, 1) < 0) return -1;
    b->p[b->n++] = c;
    return 0;
}

static int buf_write(Buf *b, const Py_UCS4 *s, Py_ssize_t n) {
    if (n <= 0) return 0;
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->p + b->n, s, sizeof(Py_UCS4) * (size_t)n);
    b->n += n;
    return 0;
}

static PyObject *to_str(const Py_UCS4 *s, Py_ssize_t n) {
    return PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, s, n);
}

/* Scratch buffers kept from call to call: fresh page-sized buffers for every pass cost more in
 * page faults than the passes themselves. Not reentrant, and need not be: the GIL is held and no
 * Python code runs inside html_to_text. Buffers grown past SCRATCH_KEEP are freed after a call. */
#define SCRATCH_KEEP ((Py_ssize_t)1 << 20)
enum { SCRATCH_PAGE, SCRATCH_WORK, SCRATCH_OUT, SCRATCH_PIECE, SCRATCH_TEXT_A, SCRATCH_TEXT_B, SCRATCH_COUNT };
static Buf scratch[SCRATCH_COUNT];

static Buf *scratch_take(int which, Py_ssize_t cap) {
    Buf *b = &scratch[which];
    if (b->p == NULL) {
        if (buf_init(b, cap) < 0) return NULL;
    } else {
        b->n = 0;
        if (buf_reserve(b, cap) < 0) return NULL;
    }
    return b;
}

static void scratch_trim(void) {
    for (int i = 0; i < SCRATCH_COUNT; i++)
        if (scratch[i].cap > SCRATCH_KEEP) buf_free(&scratch[i]);
}

/* --- character classes, as sre has them for str patterns -------------------------------- */

static inline int is_word(Py_UCS4 c) { return c == '_' || Py_UNICODE_ISALNUM(c); }
static inline int is_space(Py_UCS4 c) { return Py_UNICODE_ISSPACE(c); }

/* re.IGNORECASE against a lower-case ASCII letter x (non-letters compare exactly): sre also
 * matches U+0130 and U+0131 for i, U+212A (Kelvin) for k and U+017F (long s) for s. */
static inline int ci(Py_UCS4 c, char x) {
    if (x < 'a' || x > 'z') return c == (Py_UCS4)x;
    if (c < 128) return (c | 0x20) == (Py_UCS4)x;
    return (x == 'i' && (c == 0x130 || c == 0x131)) || (x == 'k' && c == 0x212a) || (x == 's' && c == 0x17f);
}

/* ASCII-only lower-casing: what the reference matches tag names and styles in. */
static inline Py_UCS4 alo(Py_UCS4 c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

static int starts_ci(const Py_UCS4 *s, Py_ssize_t n, Py_ssize_t i, const char *lit) {
    for (; *lit; lit++, i++)
        if (i >= n || !ci(s[i], *lit)) return 0;
    return 1;
}

static int starts_al(const Py_UCS4 *s, Py_ssize_t n, Py_ssize_t i, const char *lit) {
    for (; *lit; lit++, i++)
        if (i >= n || alo(s[i]) != (Py_UCS4)(unsigned char)*lit) return 0;
    return 1;
}

static int starts_al_u(const Py_UCS4 *s, Py_ssize_t n, Py_ssize_t i, const Py_UCS4 *lit, Py_ssize_t len) {
    if (i + len > n) return 0;
    for (Py_ssize_t k = 0; k < len; k++)
        if (alo(s[i + k]) != lit[k]) return 0;
    return 1;
}

/* \b right after a word character at i-1: true when i is the end or s[i] is not a word char */
static inline int word_ends(const Py_UCS4 *s, Py_ssize_t n, Py_ssize_t i) { return i >= n || !is_word(s[i]); }

static Py_ssize_t find_char(const Py_UCS4 *s, Py_ssize_t n, Py_ssize_t from, Py_UCS4 c) {
    if (from >= n) return -1;
#ifdef HAVE_WIDE_SEARCH
    const wchar_t *hit = wmemchr((const wchar_t *)s + from, (wchar_t)c, (size_t)(n - from));
    return hit ? (Py_ssize_t)(hit - (const wchar_t *)s) : -1;
#else
    for (Py_ssize_t i = from; i < n; i++)
        if (s[i] == c) return i;
    return -1;
#endif
}

/* for (i = next_lt(s, n, from); i >= 0; i = next_lt(s, n, i + 1)): each '<' in turn */
static inline Py_ssize_t next_lt(const Py_UCS4 *s, Py_ssize_t n, Py_ssize_t from) { return find_char(s, n, from, '<'); }

static Py_ssize_t skip_spaces(const Py_UCS4 *s, Py_ssize_t n, Py_ssize_t i) {
    while (i < n && is_space(s[i])) i++;
    return i;
}

#define OPEN_MARK 0x01
#define CLOSE_MARK 0x02

/* --- entities (html.unescape) ------------------------------------------------------------ */

static PyObject *html5;            /* html.entities.html5 */
static PyObject *invalid_charrefs; /* html._invalid_charrefs */
static PyObject *invalid_codepoints; /* html._invalid_codepoints */

typedef int (*emit_fn)(void *ctx, Py_UCS4 c);

static int emit_str(emit_fn emit, void *ctx, PyObject *str) {
    Py_ssize_t len = PyUnicode_GET_LENGTH(str);
    int kind = PyUnicode_KIND(str);
    const void *data = PyUnicode_DATA(str);
    for (Py_ssize_t k = 0; k < len; k++)
        if (emit(ctx, PyUnicode_READ(kind, data, k)) < 0) return -1;
    return 0;
}

static int emit_numeric(emit_fn emit, void *ctx, Py_UCS4 num) {
    PyObject *key = PyLong_FromUnsignedLong(num);
    if (key == NULL) return -1;
    PyObject *fixed = PyDict_GetItemWithError(invalid_charrefs, key);
    if (fixed != NULL) {
        Py_DECREF(key);
        return emit_str(emit, ctx, fixed);
    }
    if (PyErr_Occurred()) { Py_DECREF(key); return -1; }
    if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) {
        Py_DECREF(key);
        return emit(ctx, 0xFFFD);
    }
    int invalid = PySet_Contains(invalid_codepoints, key);
    Py_DECREF(key);
    if (invalid < 0) return -1;
    return invalid ? 0 : emit(ctx, num);
}

static int in_html5(const Py_UCS4 *s, Py_ssize_t len, PyObject **value) {
    PyObject *name = to_str(s, len);
    if (name == NULL) return -1;
    *value = PyDict_GetItemWithError(html5, name);
    Py_DECREF(name);
    if (*value == NULL) return PyErr_Occurred() ? -1 : 0;
    return 1;
}

static inline int name_char(Py_UCS4 c) {
    return !(c == '\t' || c == '\n' || c == '\f' || c == ' ' || c == '<' || c == '&' || c == '#' || c == ';');
}

static inline int hex_value(Py_UCS4 c) {
    if (c >= '0' && c <= '9') return (int)(c - '0');
    if (c >= 'a' && c <= 'f') return (int)(c - 'a' + 10);
    if (c >= 'A' && c <= 'F') return (int)(c - 'A' + 10);
    return -1;
}

/* html.unescape over s[0:n], every resulting character passed to emit. Its regex is
 * &(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?) and its replacement _replace_charref. */
/* Inlined at each call with its emit known, so the per-character call goes away. */
static inline __attribute__((always_inline)) int unescape(const Py_UCS4 *s, Py_ssize_t n, emit_fn emit, void *ctx) {
    Py_ssize_t i = 0;
    while (i < n) {
        Py_UCS4 c = s[i];
        if (c != '&') {
            if (emit(ctx, c) < 0) return -1;
            i++;
            continue;
        }
        Py_ssize_t j = i + 1;
        if (j < n && s[j] == '#') {
            Py_ssize_t k;
            Py_UCS4 num = 0;
            if (j + 1 < n && s[j + 1] >= '0' && s[j + 1] <= '9') {
                for (k = j + 1; k < n && s[k] >= '0' && s[k] <= '9'; k++)
                    num = num > 0x10FFFF ? 0x110000 : num * 10 + (s[k] - '0');
            } else if (j + 2 < n && (s[j + 1] == 'x' || s[j + 1] == 'X') && hex_value(s[j + 2]) >= 0) {
                for (k = j + 2; k < n && hex_value(s[k]) >= 0; k++)
                    num = num > 0x10FFFF ? 0x110000 : num * 16 + (Py_UCS4)hex_value(s[k]);
            } else {
                if (emit(ctx, '&') < 0) return -1;
                i++;
                continue;
            }
            if (num > 0x10FFFF) num = 0x110000;
            if (k < n && s[k] == ';') k++;
            if (emit_numeric(emit, ctx, num) < 0) return -1;
            i = k;
            continue;
        }
        Py_ssize_t k = j;
        while (k < n && k - j < 32 && name_char(s[k])) k++;
        if (k == j) {
            if (emit(ctx, '&') < 0) return -1;
            i++;
            continue;
        }
        if (k < n && s[k] == ';') k++;
        const Py_UCS4 *name = s + j;
        Py_ssize_t len = k - j;
        i = k;
        /* the entities of nearly every page, as html5 has them */
        if (len == 4 && name[0] == 'a' && name[1] == 'm' && name[2] == 'p' && name[3] == ';') {
            if (emit(ctx, '&') < 0) return -1;
            continue;
        }
        if (len == 5 && name[0] == 'n' && name[1] == 'b' && name[2] == 's' && name[3] == 'p' && name[4] == ';') {
            if (emit(ctx, 0xa0) < 0) return -1;
            continue;
        }
        PyObject *value;
        int found = in_html5(name, len, &value);
        if (found < 0) return -1;
        if (found) {
            if (emit_str(emit, ctx, value) < 0) return -1;
            continue;
        }
        Py_ssize_t x;
        for (x = len - 1; x > 1; x--) {
            found = in_html5(name, x, &value);
            if (found < 0) return -1;
            if (found) break;
        }
        if (x > 1) {
            if (emit_str(emit, ctx, value) < 0) return -1;
            for (Py_ssize_t r = x; r < len; r++)
                if (emit(ctx, name[r]) < 0) return -1;
        } else {
            if (emit(ctx, '&') < 0) return -1;
            for (Py_ssize_t r = 0; r < len; r++)
                if (emit(ctx, name[r]) < 0) return -1;
        }
    }
    return 0;
}

static inline __attribute__((always_inline)) int emit_plain(void *ctx, Py_UCS4 c) { return buf_put((Buf *)ctx, c); }

/* --- pass: drop invisible elements -------------------------------------------------------
 * <!--.*?(?:-->|\Z)|<(script|style|head|title|noscript|template|object|iframe)\b[^>]*>.*?(?:</\1\s*>|\Z)
 * in the ASCII-lower-cased page (re.S), each match replaced by one space. */

typedef struct {
    const char *name;
    Py_ssize_t len;
} Name;
#define NAME(literal) {literal, (Py_ssize_t)sizeof(literal) - 1}

static const Name DROPPED[] = {NAME("script"), NAME("style"), NAME("head"), NAME("title"), NAME("noscript"),
                               NAME("template"), NAME("object"), NAME("iframe"), {NULL, 0}};

static Py_ssize_t drop_match(const Py_UCS4 *s, Py_ssize_t n, Py_ssize_t i) {
    if (starts_al(s, n, i + 1, "!--")) {
        for (Py_ssize_t j = i + 4; j + 2 < n; j++)
            if (s[j] == '-' && s[j + 1] == '-' && s[j + 2] == '>') return j + 3;
        return n;
    }
    for (const Name *drop = DROPPED; drop->name; drop++) {
        const char *name = drop->name;
        Py_ssize_t len = drop->len;
        if (!starts_al(s, n, i + 1, name) || !word_ends(s, n, i + 1 + len)) continue;
        Py_ssize_t gt = find_char(s, n, i + 1 + len, '>');
        if (gt < 0) return -1;
        for (Py_ssize_t j = next_lt(s, n, gt + 1); j >= 0; j = next_lt(s, n, j + 1)) {
            if (j + 1 >= n || s[j + 1] != '/' || !starts_al(s, n, j + 2, name)) continue;
            Py_ssize_t k = skip_spaces(s, n, j + 2 + len);
            if (k < n && s[k] == '>') return k + 1;
        }
        return n;
    }
    return -1;
}

static int drop_invisible(const Buf *in, Buf *out) {
    const Py_UCS4 *s = in->p;
    Py_ssize_t n = in->n, last = 0;
    for (Py_ssize_t i = next_lt(s, n, 0); i >= 0; i = next_lt(s, n, i + 1)) {
        Py_ssize_t end = drop_match(s, n, i);
        if (end < 0) continue;
        if (buf_write(out, s + last, i - last) < 0 || buf_put(out, ' ') < 0) return -1;
        last = end;
        i = end - 1;
    }
    return buf_write(out, s + last, n - last);
}

/* --- pass: cut elements styled invisible -------------------------------------------------
 * The earliest of display\s*:\s*none, visibility\s*:\s*hidden, mso-hide\s*:\s*all (ASCII
 * case-insensitive) inside an opening tag cuts that element, up to its matching close tag. */

static Py_ssize_t style_at(const Py_UCS4 *s, Py_ssize_t n, Py_ssize_t i) {
    static const char *const words[][2] = {{"display", "none"}, {"visibility", "hidden"}, {"mso-hide", "all"}};
    for (int w = 0; w < 3; w++) {
        const char *word = words[w][0];
        if (alo(s[i]) != (Py_UCS4)word[0] || !starts_al(s, n, i, word)) continue;
        Py_ssize_t k = skip_spaces(s, n, i + (Py_ssize_t)strlen(word));
        if (k >= n || s[k] != ':') return -1;
        k = skip_spaces(s, n, k + 1);
        if (!starts_al(s, n, k, words[w][1])) return -1;
        return k + (Py_ssize_t)strlen(words[w][1]);
    }
    return -1;
}

static const char *const VOID_TAGS[] = {"br", "img", "hr", "input", "meta", "link", "wbr", "area", "col", "source", NULL};

typedef struct {
    Py_ssize_t start, end;
} Span;

typedef struct {
    Span *p;
    Py_ssize_t n, cap;
} Spans;

static int spans_add(Spans *v, Py_ssize_t start, Py_ssize_t end) {
    if (v->n == v->cap) {
        Py_ssize_t cap = v->cap ? v->cap * 2 : 8;
        Span *p = PyMem_Realloc(v->p, sizeof(Span) * (size_t)cap);
        if (p == NULL) { PyErr_NoMemory(); return -1; }
        v->p = p;
        v->cap = cap;
    }
    v->p[v->n].start = start;
    v->p[v->n].end = end;
    v->n++;
    return 0;
}

static Py_ssize_t rfind_char(const Py_UCS4 *s, Py_ssize_t from, Py_ssize_t to, Py_UCS4 c) {
    for (Py_ssize_t i = to - 1; i >= from; i--)
        if (s[i] == c) return i;
    return -1;
}

/* Cuts into out (joined with "\n" as the reference joins its pieces); the cut elements' inner
 * markup goes to hidden as spans of in. Returns 1 when something was cut, 0 when not. */
static int strip_hidden(const Buf *in, Buf *out, Spans *hidden) {
    const Py_UCS4 *s = in->p;
    Py_ssize_t n = in->n, kept_from = 0, pos = 0, cuts = 0;
    for (int round = 0; round < 500; round++) {
        Py_ssize_t style_start = -1, style_end = -1;
        /* every style has a colon, and matches come in the order of their colons (the word and
         * spaces before a colon cannot hold another one): look back from each colon */
        for (Py_ssize_t colon = find_char(s, n, pos, ':'); colon >= 0; colon = find_char(s, n, colon + 1, ':')) {
            Py_ssize_t w = colon;
            while (w > pos && is_space(s[w - 1])) w--;
            Py_UCS4 last = w > pos ? alo(s[w - 1]) : 0;
            if (last != 'y' && last != 'e') continue; /* displaY, visibilitY, mso-hidE */
            Py_ssize_t end = -1;
            if (w - 7 >= pos && (end = style_at(s, n, w - 7)) >= 0) { style_start = w - 7; }
            else if (w - 10 >= pos && (end = style_at(s, n, w - 10)) >= 0) { style_start = w - 10; }
            else if (w - 8 >= pos && (end = style_at(s, n, w - 8)) >= 0) { style_start = w - 8; }
            if (style_start >= 0) { style_end = end; break; }
        }
        if (style_start < 0) break;
        pos = style_end;
        Py_ssize_t lt = rfind_char(s, kept_from, style_start, '<');
        Py_ssize_t gt = find_char(s, n, style_end, '>');
        if (lt < 0 || gt < 0) continue;
        if (rfind_char(s, lt, style_start, '>') >= 0) continue;
        Py_UCS4 tag[64];
        Py_ssize_t len = 0;
        Py_ssize_t t = lt + 1;
        if (t >= n || !((s[t] >= 'a' && s[t] <= 'z') || (s[t] >= 'A' && s[t] <= 'Z'))) continue;
        Py_ssize_t name_end = t;
        while (name_end < n && ((s[name_end] >= 'a' && s[name_end] <= 'z') || (s[name_end] >= 'A' && s[name_end] <= 'Z') ||
                                (s[name_end] >= '0' && s[name_end] <= '9')))
            name_end++;
        len = name_end - t;
        int is_void = 0;
        if (len <= 6) {
            for (const char *const *v = VOID_TAGS; *v; v++)
                if ((Py_ssize_t)strlen(*v) == len && starts_al(s, n, t, *v)) { is_void = 1; break; }
        }
        if (is_void) continue;
        Py_UCS4 *name = tag;
        Py_UCS4 *long_name = NULL;
        if (len > 64) {
            long_name = PyMem_Malloc(sizeof(Py_UCS4) * (size_t)len);
            if (long_name == NULL) { PyErr_NoMemory(); return -1; }
            name = long_name;
        }
        for (Py_ssize_t k = 0; k < len; k++) name[k] = alo(s[t + k]);
        /* <(/?)tag\b[^>]*> from gt + 1, nesting counted */
        Py_ssize_t level = 1, close_start = n, close_end = n;
        for (Py_ssize_t j = next_lt(s, n, gt + 1); j >= 0; j = next_lt(s, n, j + 1)) {
            int closing = j + 1 < n && s[j + 1] == '/';
            Py_ssize_t at = j + 1 + closing;
            if (!starts_al_u(s, n, at, name, len) || !word_ends(s, n, at + len)) continue;
            Py_ssize_t end = find_char(s, n, at + len, '>');
            if (end < 0) break;
            level += closing ? -1 : 1;
            if (level == 0) { close_start = j; close_end = end + 1; break; }
            j = end;
        }
        PyMem_Free(long_name);
        if (cuts && buf_put(out, '\n') < 0) return -1;
        if (buf_write(out, s + kept_from, lt - kept_from) < 0) return -1;
        if (spans_add(hidden, gt + 1, close_start) < 0) return -1;
        kept_from = pos = close_end;
        cuts++;
    }
    if (!cuts) return 0;
    if (buf_put(out, '\n') < 0 || buf_write(out, s + kept_from, n - kept_from) < 0) return -1;
    return 1;
}

/* --- pass: anchors to marks ---------------------------------------------------------------
 * <a\b[^>]*?\bhref\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]*))[^>]*>|<a\b[^>]*>  becomes OPEN_MARK
 * (its href kept), and </a\s*> becomes CLOSE_MARK, re.IGNORECASE. */

static Py_ssize_t anchor_open(const Py_UCS4 *s, Py_ssize_t n, Py_ssize_t i, Py_ssize_t *href_start, Py_ssize_t *href_end) {
    if (i + 1 >= n || !ci(s[i + 1], 'a') || !word_ends(s, n, i + 2)) return -1;
    Py_ssize_t first_gt = find_char(s, n, i + 2, '>');
    if (first_gt < 0) return -1;
    for (Py_ssize_t k = i + 2; k < first_gt; k++) {
        if (!ci(s[k], 'h') || is_word(s[k - 1]) || !starts_ci(s, n, k, "href")) continue;
        Py_ssize_t m = skip_spaces(s, n, k + 4);
        if (m >= n || s[m] != '=') continue;
        Py_ssize_t v = skip_spaces(s, n, m + 1);
        if (v < n && (s[v] == '"' || s[v] == '\'')) {
            Py_ssize_t q = find_char(s, n, v + 1, s[v]);
            if (q >= 0) {
                Py_ssize_t gt = find_char(s, n, q + 1, '>');
                if (gt >= 0) {
                    *href_start = v + 1;
                    *href_end = q;
                    return gt + 1;
                }
            }
        }
        Py_ssize_t e = v;
        while (e < n && s[e] != '>' && !is_space(s[e])) e++;
        Py_ssize_t gt = find_char(s, n, e, '>');
        if (gt >= 0) {
            *href_start = v;
            *href_end = e;
            return gt + 1;
        }
    }
    *href_start = *href_end = -1;
    return first_gt + 1;
}

static Py_ssize_t anchor_close(const Py_UCS4 *s, Py_ssize_t n, Py_ssize_t i) {
    if (i + 2 >= n || s[i + 1] != '/' || !ci(s[i + 2], 'a')) return -1;
    Py_ssize_t k = skip_spaces(s, n, i + 3);
    return (k < n && s[k] == '>') ? k + 1 : -1;
}

static PyObject *href_value(const Py_UCS4 *s, Py_ssize_t start, Py_ssize_t end) {
    if (find_char(s, end, start, '&') < 0) { /* nothing to decode: the stripped slice */
        while (start < end && is_space(s[start])) start++;
        while (end > start && is_space(s[end - 1])) end--;
        return to_str(s + start, end - start);
    }
    Buf b;
    if (buf_init(&b, end - start) < 0) return NULL;
    if (unescape(s + start, end - start, emit_plain, &b) < 0) { buf_free(&b); return NULL; }
    Py_ssize_t a = 0, z = b.n;
    while (a < z && is_space(b.p[a])) a++;
    while (z > a && is_space(b.p[z - 1])) z--;
    PyObject *str = to_str(b.p + a, z - a);
    buf_free(&b);
    return str;
}

/* Anchors replaced by marks; each opening anchor's href appended to hrefs. The two regexes ran
 * one after the other; one scan gives the same, as neither can match inside the other's match. */
static int mark_anchors(const Buf *in, Buf *out, PyObject *hrefs) {
    const Py_UCS4 *s = in->p;
    Py_ssize_t n = in->n, last = 0;
    for (Py_ssize_t i = next_lt(s, n, 0); i >= 0; i = next_lt(s, n, i + 1)) {
        Py_ssize_t hs, he, end = anchor_open(s, n, i, &hs, &he);
        Py_UCS4 mark = OPEN_MARK;
        if (end >= 0) {
            PyObject *href = hs >= 0 ? href_value(s, hs, he) : PyUnicode_New(0, 0);
            if (href == NULL) return -1;
            int failed = PyList_Append(hrefs, href);
            Py_DECREF(href);
            if (failed < 0) return -1;
        } else {
            end = anchor_close(s, n, i);
            if (end < 0) continue;
            mark = CLOSE_MARK;
        }
        if (buf_write(out, s + last, i - last) < 0 || buf_put(out, mark) < 0) return -1;
        last = end;
        i = end - 1;
    }
    return buf_write(out, s + last, n - last);
}

/* --- markup to text -----------------------------------------------------------------------
 * Images to their alt text, block tags to newlines, other tags removed, entities decoded,
 * invisible characters dropped, whitespace normalised: one pass each, in the reference's order. */

/* <img\b[^>]*?\balt\s*=\s*(?:"([^"]*)"|'([^']*)')[^>]*>, re.IGNORECASE */
static Py_ssize_t image_alt(const Py_UCS4 *s, Py_ssize_t n, Py_ssize_t i, Py_ssize_t *alt_start, Py_ssize_t *alt_end) {
    if (!starts_ci(s, n, i + 1, "img") || !word_ends(s, n, i + 4)) return -1;
    Py_ssize_t first_gt = find_char(s, n, i + 4, '>');
    if (first_gt < 0) return -1;
    for (Py_ssize_t k = i + 4; k < first_gt; k++) {
        if (!ci(s[k], 'a') || is_word(s[k - 1]) || !starts_ci(s, n, k, "alt")) continue;
        Py_ssize_t m = skip_spaces(s, n, k + 3);
        if (m >= n || s[m] != '=') continue;
        Py_ssize_t v = skip_spaces(s, n, m + 1);
        if (v >= n || (s[v] != '"' && s[v] != '\'')) continue;
        Py_ssize_t q = find_char(s, n, v + 1, s[v]);
        if (q < 0) continue;
        Py_ssize_t gt = find_char(s, n, q + 1, '>');
        if (gt < 0) continue;
        *alt_start = v + 1;
        *alt_end = q;
        return gt + 1;
    }
    return -1;
}

static int images_to_alt(const Py_UCS4 *s, Py_ssize_t n, Buf *out) {
    Py_ssize_t last = 0;
    for (Py_ssize_t i = next_lt(s, n, 0); i >= 0; i = next_lt(s, n, i + 1)) {
        Py_ssize_t as, ae, end = image_alt(s, n, i, &as, &ae);
        if (end < 0) continue;
        if (buf_write(out, s + last, i - last) < 0 || buf_put(out, '\n') < 0 || buf_write(out, s + as, ae - as) < 0 ||
            buf_put(out, ' ') < 0)
            return -1;
        last = end;
        i = end - 1;
    }
    return buf_write(out, s + last, n - last);
}

static const Name BLOCK_TAGS[] = {NAME("p"),     NAME("div"),   NAME("tr"), NAME("td"), NAME("th"),
                                  NAME("li"),    NAME("table"), NAME("tbody"), NAME("thead"), NAME("ul"),
                                  NAME("ol"),    NAME("blockquote"), NAME("center"), NAME("section"),
                                  NAME("article"), {NULL, 0}};

/* <(?:br|hr|/?(?:p|div|tr|td|th|li|h[1-6]|table|tbody|thead|ul|ol|blockquote|center|section|article))\b[^>]*>
 * re.IGNORECASE. Every name is word characters followed by \b, so the name is the whole word. */
static Py_ssize_t block_tag(const Py_UCS4 *s, Py_ssize_t n, Py_ssize_t i) {
    Py_ssize_t at = i + 1, len = -1;
    if ((starts_ci(s, n, at, "br") || starts_ci(s, n, at, "hr")) && word_ends(s, n, at + 2)) {
        len = 2;
    } else {
        if (at < n && s[at] == '/') at++;
        if (at + 1 < n && ci(s[at], 'h') && s[at + 1] >= '1' && s[at + 1] <= '6' && word_ends(s, n, at + 2)) {
            len = 2;
        } else {
            for (const Name *tag = BLOCK_TAGS; tag->name; tag++)
                if (starts_ci(s, n, at, tag->name) && word_ends(s, n, at + tag->len)) { len = tag->len; break; }
        }
    }
    if (len < 0) return -1;
    Py_ssize_t gt = find_char(s, n, at + len, '>');
    return gt < 0 ? -1 : gt + 1;
}

static int blocks_to_newlines(const Py_UCS4 *s, Py_ssize_t n, Buf *out) {
    Py_ssize_t last = 0;
    for (Py_ssize_t i = next_lt(s, n, 0); i >= 0; i = next_lt(s, n, i + 1)) {
        Py_ssize_t end = block_tag(s, n, i);
        if (end < 0) continue;
        if (buf_write(out, s + last, i - last) < 0 || buf_put(out, '\n') < 0) return -1;
        last = end;
        i = end - 1;
    }
    return buf_write(out, s + last, n - last);
}

/* <[^>]*> removed */
static int strip_tags(const Py_UCS4 *s, Py_ssize_t n, Buf *out) {
    Py_ssize_t last = 0;
    for (Py_ssize_t i = next_lt(s, n, 0); i >= 0; i = next_lt(s, n, i + 1)) {
        Py_ssize_t gt = find_char(s, n, i + 1, '>');
        if (gt < 0) break;
        if (buf_write(out, s + last, i - last) < 0) return -1;
        last = gt + 1;
        i = gt;
    }
    return buf_write(out, s + last, n - last);
}

/* Invisible characters dropped, other spaces made ' ', runs of spaces collapsed, spaces next
 * to a newline dropped, runs of newlines collapsed: what the reference's replaces and
 * substitutions give, one character at a time. */
static inline __attribute__((always_inline)) int normalise_space(void *ctx, Py_UCS4 c) {
    Buf *b = ctx;
    if (c > ' ' && c < 0x7f) { /* most characters: nothing to normalise */
        if (b->n == b->cap && buf_reserve(b, 1) < 0) return -1;
        b->p[b->n++] = c;
        return 0;
    }
    switch (c) {
    case 0x200b: case 0x200c: case 0x200d: case 0xfeff: case 0x034f: case 0x00ad:
        return 0;
    case 0xa0: case '\t': case '\r': case '\f': case '\v': case 0x2002: case 0x2003: case 0x2009:
    case 0x200a: case 0x202f: case 0x3000:
        c = ' ';
        break;
    default:
        break;
    }
    Py_UCS4 last = b->n ? b->p[b->n - 1] : 0;
    if (c == ' ') {
        if (b->n && (last == ' ' || last == '\n')) return 0;
    } else if (c == '\n') {
        if (b->n && last == ' ') {
            b->n--;
            last = b->n ? b->p[b->n - 1] : 0;
        }
        if (b->n && last == '\n') return 0;
    }
    return buf_put(b, c);
}

/* The reference's _markup_to_text; the result is stripped of whitespace at both ends. */
static int markup_to_text(const Py_UCS4 *s, Py_ssize_t n, Buf *text) {
    Buf *a = scratch_take(SCRATCH_TEXT_A, n + 16), *b = a ? scratch_take(SCRATCH_TEXT_B, n + 16) : NULL;
    if (b == NULL) return -1;
    /* the reference converts images only when "alt" is in the markup (case-sensitive) */
    int has_alt = 0;
    for (Py_ssize_t i = find_char(s, n, 0, 'a'); i >= 0 && i + 2 < n; i = find_char(s, n, i + 1, 'a'))
        if (s[i + 1] == 'l' && s[i + 2] == 't') { has_alt = 1; break; }
    Buf *cur = a;
    if (has_alt) {
        if (images_to_alt(s, n, b) < 0) return -1;
        if (blocks_to_newlines(b->p, b->n, a) < 0) return -1;
    } else if (blocks_to_newlines(s, n, a) < 0) {
        return -1;
    }
    b->n = 0;
    if (strip_tags(a->p, a->n, b) < 0) return -1;
    cur = b;
    text->n = 0;
    if (buf_reserve(text, cur->n) < 0) return -1;
    return unescape(cur->p, cur->n, normalise_space, text);
}

static void strip_ends(const Buf *b, Py_ssize_t *start, Py_ssize_t *end) {
    Py_ssize_t a = 0, z = b->n;
    while (a < z && is_space(b->p[a])) a++;
    while (z > a && is_space(b->p[z - 1])) z--;
    *start = a;
    *end = z;
}

/* --- html_to_text -------------------------------------------------------------------------- */

/* One anchor's entry: (href, start, end), or with an offset (href, anchor text stripped,
 * offset + start, offset + end), the fields of policies.message.Link. */
static PyObject *anchor_entry(PyObject *href, const Buf *text, Py_ssize_t start, Py_ssize_t end, Py_ssize_t offset) {
    if (offset < 0) return Py_BuildValue("(Onn)", href, start, end);
    Py_ssize_t a = start, z = end;
    while (a < z && is_space(text->p[a])) a++;
    while (z > a && is_space(text->p[z - 1])) z--;
    PyObject *label = to_str(text->p + a, z - a);
    if (label == NULL) return NULL;
    PyObject *entry = Py_BuildValue("(ONnn)", href, label, offset + start, offset + end);
    return entry;
}

static PyObject *html_to_text(PyObject *module, PyObject *args) {
    PyObject *arg;
    Py_ssize_t offset = -1;
    if (!PyArg_ParseTuple(args, "U|n:html_to_text", &arg, &offset)) return NULL;
    if (offset < -1) {
        PyErr_SetString(PyExc_ValueError, "html_to_text(): offset must not be negative");
        return NULL;
    }
    PyObject *result = NULL, *hrefs = NULL, *text = NULL, *hidden_text = NULL, *spans = NULL;
    Buf *page = NULL, *work = NULL, *out = NULL, *piece = NULL;
    Spans hidden = {0};
    Py_ssize_t n = PyUnicode_GET_LENGTH(arg);
    if ((page = scratch_take(SCRATCH_PAGE, n + 16)) == NULL || (work = scratch_take(SCRATCH_WORK, n + 16)) == NULL ||
        (out = scratch_take(SCRATCH_OUT, n + 16)) == NULL || (piece = scratch_take(SCRATCH_PIECE, 64)) == NULL)
        goto done;
    if (PyUnicode_AsUCS4(arg, page->p, page->cap, 0) == NULL) goto done;
    page->n = n;
    /* the page's own marks go first: ours must be the only ones */
    if (PyUnicode_FindChar(arg, OPEN_MARK, 0, n, 1) != -1 || PyUnicode_FindChar(arg, CLOSE_MARK, 0, n, 1) != -1) {
        Py_ssize_t kept = 0;
        for (Py_ssize_t i = 0; i < n; i++)
            if (page->p[i] != OPEN_MARK && page->p[i] != CLOSE_MARK) page->p[kept++] = page->p[i];
        page->n = kept;
    }
    if (drop_invisible(page, work) < 0) goto done;
    page->n = 0;
    int cut = strip_hidden(work, page, &hidden);
    if (cut < 0) goto done;
    Buf *markup = cut ? page : work; /* work keeps the hidden spans' source either way */
    hrefs = PyList_New(0);
    if (hrefs == NULL) goto done;
    out->n = 0;
    if (mark_anchors(markup, out, hrefs) < 0) goto done;
    /* hidden text: each cut element's markup to text, joined by newlines */
    Buf joined;
    if (buf_init(&joined, 64) < 0) goto done;
    for (Py_ssize_t h = 0; h < hidden.n; h++) {
        if (markup_to_text(work->p + hidden.p[h].start, hidden.p[h].end - hidden.p[h].start, piece) < 0) {
            buf_free(&joined);
            goto done;
        }
        Py_ssize_t a, z;
        strip_ends(piece, &a, &z);
        if ((h && buf_put(&joined, '\n') < 0) || buf_write(&joined, piece->p + a, z - a) < 0) {
            buf_free(&joined);
            goto done;
        }
    }
    hidden_text = to_str(joined.p, joined.n);
    buf_free(&joined);
    if (hidden_text == NULL) goto done;
    if (markup_to_text(out->p, out->n, piece) < 0) goto done;
    Py_ssize_t a, z;
    strip_ends(piece, &a, &z);
    /* marks out; each anchor's span in the text without marks */
    spans = PyList_New(0);
    if (spans == NULL) goto done;
    Py_ssize_t count = PyList_GET_SIZE(hrefs);
    Py_ssize_t index = -1, open_at = -1;
    work->n = 0;
    for (Py_ssize_t i = a; i < z; i++) {
        Py_UCS4 c = piece->p[i];
        if (c != OPEN_MARK && c != CLOSE_MARK) {
            if (buf_put(work, c) < 0) goto done;
            continue;
        }
        if (!count) continue;
        Py_ssize_t at = work->n;
        if (open_at >= 0) {
            PyObject *span = anchor_entry(PyList_GET_ITEM(hrefs, index), work, open_at, at, offset);
            if (span == NULL || PyList_Append(spans, span) < 0) { Py_XDECREF(span); goto done; }
            Py_DECREF(span);
            open_at = -1;
        }
        if (c == OPEN_MARK) {
            index++;
            open_at = index < count ? at : -1;
        }
    }
    if (open_at >= 0) {
        PyObject *span = anchor_entry(PyList_GET_ITEM(hrefs, index), work, open_at, work->n, offset);
        if (span == NULL || PyList_Append(spans, span) < 0) { Py_XDECREF(span); goto done; }
        Py_DECREF(span);
    }
    text = to_str(work->p, work->n);
    if (text == NULL) goto done;
    result = PyTuple_Pack(3, text, hidden_text, spans);
done:
    Py_XDECREF(hrefs);
    Py_XDECREF(text);
    Py_XDECREF(hidden_text);
    Py_XDECREF(spans);
    scratch_trim();
    PyMem_Free(hidden.p);
    return result;
}

/* --- words --------------------------------------------------------------------------------- */

/* The distinct \w+ runs of a str, as a frozenset. A page repeats its words: they are told apart
 * in a table of (start, length) first, and a str is made only for each distinct one. */
typedef struct {
    Py_ssize_t start, len;
    Py_uhash_t hash;
} WordSlot;

static inline __attribute__((always_inline)) PyObject *words_of(PyObject *arg, int kind) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(arg);
    const char *data = PyUnicode_DATA(arg);
    size_t cap = 256, used = 0;
    WordSlot *table = PyMem_Calloc(cap, sizeof(WordSlot));
    PyObject *found = PySet_New(NULL);
    if (table == NULL || found == NULL) goto fail;
    Py_ssize_t start = -1;
    Py_uhash_t hash = 0;
    for (Py_ssize_t i = 0; i <= n; i++) {
        Py_UCS4 c = i < n ? PyUnicode_READ(kind, data, i) : 0;
        int w = i < n && (c < 128 ? ((c | 0x20) - 'a' < 26 || c - '0' < 10 || c == '_') : is_word(c));
        if (w) {
            if (start < 0) { start = i; hash = 14695981039346656037ULL; }
            hash = (hash ^ c) * 1099511628211ULL;
            continue;
        }
        if (start < 0) continue;
        Py_ssize_t len = i - start;
        size_t slot = (size_t)hash & (cap - 1);
        for (;;) {
            WordSlot *e = &table[slot];
            if (e->len == 0) {
                e->start = start;
                e->len = len;
                e->hash = hash;
                used++;
                PyObject *word = PyUnicode_Substring(arg, start, i);
                if (word == NULL || PySet_Add(found, word) < 0) { Py_XDECREF(word); goto fail; }
                Py_DECREF(word);
                break;
            }
            if (e->hash == hash && e->len == len &&
                memcmp(data + (size_t)e->start * kind, data + (size_t)start * kind, (size_t)len * kind) == 0)
                break;
            slot = (slot + 1) & (cap - 1);
        }
        start = -1;
        if (used * 2 > cap) { /* grow: rehash every slot into a table twice the size */
            size_t bigger = cap * 2;
            WordSlot *grown = PyMem_Calloc(bigger, sizeof(WordSlot));
            if (grown == NULL) { PyErr_NoMemory(); goto fail; }
            for (size_t k = 0; k < cap; k++) {
                if (table[k].len == 0) continue;
                size_t to = (size_t)table[k].hash & (bigger - 1);
                while (grown[to].len) to = (to + 1) & (bigger - 1);
                grown[to] = table[k];
            }
            PyMem_Free(table);
            table = grown;
            cap = bigger;
        }
    }
    PyMem_Free(table);
    PyObject *frozen = PyFrozenSet_New(found);
    Py_DECREF(found);
    return frozen;
fail:
    if (table == NULL && !PyErr_Occurred()) PyErr_NoMemory();
    PyMem_Free(table);
    Py_XDECREF(found);
    return NULL;
}

/* Each scanner is inlined once per string kind, so that PyUnicode_READ has no kind to test. */
#define PER_KIND(kind, CALL)                                \
    switch (kind) {                                         \
    case PyUnicode_1BYTE_KIND: return CALL(PyUnicode_1BYTE_KIND); \
    case PyUnicode_2BYTE_KIND: return CALL(PyUnicode_2BYTE_KIND); \
    default: return CALL(PyUnicode_4BYTE_KIND);             \
    }

static PyObject *words(PyObject *module, PyObject *arg) {
    if (!PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "words() takes a str");
        return NULL;
    }
    int kind = PyUnicode_KIND(arg);
#define CALL(kind) words_of(arg, kind)
    PER_KIND(kind, CALL)
#undef CALL
}

/* --- URLs written as text ------------------------------------------------------------------ */

/* [^\s<>"'()\[\]] after http(s):// and www., [^\s<>"'] after mailto: and magnet:? */
static inline int url_char(Py_UCS4 c, int strict) {
    if (is_space(c) || c == '<' || c == '>' || c == '"' || c == '\'') return 0;
    return !strict || !(c == '(' || c == ')' || c == '[' || c == ']');
}

/* (start, end) of each match of (?:https?://|www\.)[^\s<>"'()\[\]]+|mailto:[^\s<>"']+|magnet:\?[^\s<>"']+
 * with re.IGNORECASE, as finditer gives them. */
static inline __attribute__((always_inline)) PyObject *urls_of(PyObject *arg, int kind) {
    PyObject *found = PyList_New(0);
    if (found == NULL) return NULL;
    Py_ssize_t n = PyUnicode_GET_LENGTH(arg);
    const void *data = PyUnicode_DATA(arg);
#define AT(k) ((k) < n ? PyUnicode_READ(kind, data, (k)) : 0)
#define CI_AT(k, x) ((k) < n && ci(PyUnicode_READ(kind, data, (k)), (x)))
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        Py_ssize_t body = -1;
        int strict = 1;
        if ((c | 0x20) == 'h' && c < 128) {
            if (CI_AT(i + 1, 't') && CI_AT(i + 2, 't') && CI_AT(i + 3, 'p')) {
                Py_ssize_t k = i + 4;
                if (CI_AT(k, 's') && AT(k + 1) == ':' && AT(k + 2) == '/' && AT(k + 3) == '/') body = k + 4;
                else if (AT(k) == ':' && AT(k + 1) == '/' && AT(k + 2) == '/') body = k + 3;
            }
        } else if ((c | 0x20) == 'w' && c < 128) {
            if (CI_AT(i + 1, 'w') && CI_AT(i + 2, 'w') && AT(i + 3) == '.') body = i + 4;
        } else if ((c | 0x20) == 'm' && c < 128) {
            if (CI_AT(i + 1, 'a') && CI_AT(i + 2, 'i') && CI_AT(i + 3, 'l') && CI_AT(i + 4, 't') && CI_AT(i + 5, 'o') &&
                AT(i + 6) == ':') {
                body = i + 7;
                strict = 0;
            } else if (CI_AT(i + 1, 'a') && CI_AT(i + 2, 'g') && CI_AT(i + 3, 'n') && CI_AT(i + 4, 'e') &&
                       CI_AT(i + 5, 't') && AT(i + 6) == ':' && AT(i + 7) == '?') {
                body = i + 8;
                strict = 0;
            }
        }
        if (body < 0 || body >= n || !url_char(PyUnicode_READ(kind, data, body), strict)) continue;
        Py_ssize_t end = body + 1;
        while (end < n && url_char(PyUnicode_READ(kind, data, end), strict)) end++;
        PyObject *span = Py_BuildValue("(nn)", i, end);
        if (span == NULL || PyList_Append(found, span) < 0) {
            Py_XDECREF(span);
            Py_DECREF(found);
            return NULL;
        }
        Py_DECREF(span);
        i = end - 1;
    }
#undef AT
#undef CI_AT
    return found;
}

static PyObject *urls(PyObject *module, PyObject *arg) {
    if (!PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "urls() takes a str");
        return NULL;
    }
    int kind = PyUnicode_KIND(arg);
#define CALL(kind) urls_of(arg, kind)
    PER_KIND(kind, CALL)
#undef CALL
}

/* --- folding -------------------------------------------------------------------------------- */

/* fold(text, fold_run): ASCII letters lower-cased here, and each run of non-ASCII characters
 * replaced by fold_run(run), one call per distinct run. Exact for a fold made of NFKD, per-character
 * removals and casefold: ASCII characters are starters, so no decomposition reorders across them. */
static inline __attribute__((always_inline)) PyObject *fold_of(PyObject *text, PyObject *fold_run, int kind) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    const void *data = PyUnicode_DATA(text);
    /* a kept buffer, unless a fold_run that folds again is using it */
    static Buf kept;
    static int kept_busy;
    Buf fresh = {0}, *out = &fresh;
    if (!kept_busy) {
        out = &kept;
        kept_busy = 1;
        if (kept.p == NULL ? buf_init(&kept, n + 16) < 0 : (kept.n = 0, buf_reserve(&kept, n + 16) < 0)) {
            kept_busy = 0;
            return NULL;
        }
    } else if (buf_init(&fresh, n + 16) < 0) {
        return NULL;
    }
    PyObject *done = PyDict_New();
    PyObject *result = NULL;
    if (done == NULL) goto fail;
    for (Py_ssize_t i = 0; i < n;) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c < 128) {
            if (buf_put(out, alo(c)) < 0) goto fail;
            i++;
            continue;
        }
        Py_ssize_t j = i + 1;
        while (j < n && PyUnicode_READ(kind, data, j) >= 128) j++;
        PyObject *run = PyUnicode_Substring(text, i, j);
        if (run == NULL) goto fail;
        PyObject *folded = PyDict_GetItemWithError(done, run);
        if (folded != NULL) {
            Py_INCREF(folded);
        } else if (!PyErr_Occurred()) {
            folded = PyObject_CallOneArg(fold_run, run);
            if (folded != NULL && (!PyUnicode_Check(folded) || PyDict_SetItem(done, run, folded) < 0)) {
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "fold_run must return a str");
                Py_CLEAR(folded);
            }
        }
        Py_DECREF(run);
        if (folded == NULL) goto fail;
        Py_ssize_t len = PyUnicode_GET_LENGTH(folded);
        int fkind = PyUnicode_KIND(folded);
        const void *fdata = PyUnicode_DATA(folded);
        int failed = buf_reserve(out, len);
        for (Py_ssize_t k = 0; !failed && k < len; k++) out->p[out->n++] = PyUnicode_READ(fkind, fdata, k);
        Py_DECREF(folded);
        if (failed) goto fail;
        i = j;
    }
    result = to_str(out->p, out->n);
fail:
    Py_XDECREF(done);
    if (out == &kept) {
        kept_busy = 0;
        if (kept.cap > SCRATCH_KEEP) buf_free(&kept);
    } else {
        buf_free(&fresh);
    }
    return result;
}

static PyObject *fold(PyObject *module, PyObject *args) {
    PyObject *text, *fold_run;
    if (!PyArg_ParseTuple(args, "UO:fold", &text, &fold_run)) return NULL;
    int kind = PyUnicode_KIND(text);
#define CALL(kind) fold_of(text, fold_run, kind)
    PER_KIND(kind, CALL)
#undef CALL
}

/* --- digit runs ---------------------------------------------------------------------------- */

/* Windows around the runs of \d[\d .\-]{7,} in a str: (start - before, end + after) of each
 * run, overlapping or touching windows merged. The personal-data patterns only run in these. */
static inline __attribute__((always_inline)) PyObject *number_windows_of(PyObject *text, Py_ssize_t before, Py_ssize_t after, int kind) {
    PyObject *windows = PyList_New(0);
    if (windows == NULL) return NULL;
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    const void *data = PyUnicode_DATA(text);
    Py_ssize_t w_start = -1, w_end = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c < '0' || (c > '9' && (c < 128 || !Py_UNICODE_ISDECIMAL(c)))) continue;
        Py_ssize_t j = i + 1;
        for (; j < n; j++) {
            Py_UCS4 d = PyUnicode_READ(kind, data, j);
            if (d == ' ' || d == '.' || d == '-' || (d >= '0' && d <= '9') || (d >= 128 && Py_UNICODE_ISDECIMAL(d))) continue;
            break;
        }
        /* a later start inside this run has a shorter run: none matches, so go on after it */
        if (j - i - 1 >= 7) {
            Py_ssize_t start = i - before < 0 ? 0 : i - before, end = j + after;
            if (w_start >= 0 && start <= w_end) {
                w_end = end;
            } else {
                if (w_start >= 0) {
                    PyObject *span = Py_BuildValue("(nn)", w_start, w_end);
                    if (span == NULL || PyList_Append(windows, span) < 0) { Py_XDECREF(span); Py_DECREF(windows); return NULL; }
                    Py_DECREF(span);
                }
                w_start = start;
                w_end = end;
            }
        }
        i = j - 1;
    }
    if (w_start >= 0) {
        PyObject *span = Py_BuildValue("(nn)", w_start, w_end);
        if (span == NULL || PyList_Append(windows, span) < 0) { Py_XDECREF(span); Py_DECREF(windows); return NULL; }
        Py_DECREF(span);
    }
    return windows;
}

static PyObject *number_windows(PyObject *module, PyObject *args) {
    PyObject *text;
    Py_ssize_t before, after;
    if (!PyArg_ParseTuple(args, "Unn:number_windows", &text, &before, &after)) return NULL;
    int kind = PyUnicode_KIND(text);
#define CALL(kind) number_windows_of(text, before, after, kind)
    PER_KIND(kind, CALL)
#undef CALL
}

/* --- quoted-printable ---------------------------------------------------------------------- */

static inline int hex_digit(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f');
}

/* binascii.a2b_qp(data) byte for byte (soft breaks, "==", a lone "=" kept, "=" at the end
 * dropped, "=\r" skipping to the next newline), copying the runs between '=' whole. */
static PyObject *qp_decode(PyObject *module, PyObject *arg) {
    Py_buffer in;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *s = in.buf;
    Py_ssize_t n = in.len, i = 0, o = 0;
    PyObject *result = PyBytes_FromStringAndSize(NULL, n);
    if (result == NULL) { PyBuffer_Release(&in); return NULL; }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    while (i < n) {
        const unsigned char *eq = memchr(s + i, '=', (size_t)(n - i));
        Py_ssize_t run = eq ? (Py_ssize_t)(eq - s) - i : n - i;
        memcpy(out + o, s + i, (size_t)run);
        o += run;
        i += run;
        if (i >= n) break;
        i++; /* the '=' */
        if (i >= n) break;
        unsigned char c = s[i];
        if (c == '\n' || c == '\r') {
            if (c != '\n') {
                const unsigned char *nl = memchr(s + i, '\n', (size_t)(n - i));
                i = nl ? (Py_ssize_t)(nl - s) : n;
            }
            if (i < n) i++;
        } else if (c == '=') {
            out[o++] = '=';
            i++;
        } else if (i + 1 < n && hex_digit(c) && hex_digit(s[i + 1])) {
            out[o++] = (unsigned char)((hex_value(c) << 4) | hex_value(s[i + 1]));
            i += 2;
        } else {
            out[o++] = '=';
        }
    }
    PyBuffer_Release(&in);
    if (_PyBytes_Resize(&result, o) < 0) return NULL;
    return result;
}

/* --- module -------------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"html_to_text", html_to_text, METH_VARARGS,
     "html_to_text(markup[, offset]) -> (text, hidden_text, anchors): the visible text of an HTML page, the "
     "text of elements styled invisible, and each anchor as (href, start, end) in the text; with an offset, "
     "as (href, anchor text stripped, offset + start, offset + end)."},
    {"qp_decode", qp_decode, METH_O, "qp_decode(data) -> bytes: binascii.a2b_qp(data), faster on long bodies."},
    {"urls", urls, METH_O, "urls(text) -> [(start, end), ...] of the http(s)://, www., mailto: and magnet:? URLs."},
    {"fold", fold, METH_VARARGS,
     "fold(text, fold_run) -> text with ASCII lower-cased and each run of non-ASCII characters folded by fold_run."},
    {"words", words, METH_O, "words(text) -> frozenset of the distinct \\w+ runs of text."},
    {"number_windows", number_windows, METH_VARARGS,
     "number_windows(text, before, after) -> [(start, end), ...]: around each run of \\d[\\d .\\-]{7,}, "
     "widened by before and after, overlapping windows merged."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_speedups", "C passes of policies.message: HTML to text, word splitting.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    PyObject *html = PyImport_ImportModule("html");
    if (html == NULL) return NULL;
    PyObject *entities = PyImport_ImportModule("html.entities");
    if (entities == NULL) { Py_DECREF(html); return NULL; }
    html5 = PyObject_GetAttrString(entities, "html5");
    invalid_charrefs = PyObject_GetAttrString(html, "_invalid_charrefs");
    invalid_codepoints = PyObject_GetAttrString(html, "_invalid_codepoints");
    Py_DECREF(entities);
    Py_DECREF(html);
    if (html5 == NULL || invalid_charrefs == NULL || invalid_codepoints == NULL) return NULL;
    if (!PyDict_Check(html5) || !PyDict_Check(invalid_charrefs) || !PyAnySet_Check(invalid_codepoints)) {
        PyErr_SetString(PyExc_ImportError, "html's entity tables are not what _speedups expects");
        return NULL;
    }
    return PyModule_Create(&module_def);
}
