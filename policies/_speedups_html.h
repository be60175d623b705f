/* The HTML passes of _speedups.c for one kind of str, included once per kind with
 *   CH       its code unit (Py_UCS1, Py_UCS2 or Py_UCS4) and CH_SIZE its size in bytes,
 *   CH_KIND  its PyUnicode kind,
 *   P(name)  the name with the kind's suffix.
 * A pass reads and writes code units of the page's own kind: it only ever adds ASCII (marks,
 * newlines, spaces) or characters of the page. Decoding entities writes code points (Buf).
 * The buffers of each kind come from _speedups_buf.h. */

static int P(starts_ci)(const CH *s, Py_ssize_t n, Py_ssize_t i, const char *lit) {
    for (; *lit; lit++, i++)
        if (i >= n || !ci(s[i], *lit)) return 0;
    return 1;
}

static int P(starts_al)(const CH *s, Py_ssize_t n, Py_ssize_t i, const char *lit) {
    for (; *lit; lit++, i++)
        if (i >= n || alo(s[i]) != (Py_UCS4)(unsigned char)*lit) return 0;
    return 1;
}

static int P(starts_al_u)(const CH *s, Py_ssize_t n, Py_ssize_t i, const Py_UCS4 *lit, Py_ssize_t len) {
    if (i + len > n) return 0;
    for (Py_ssize_t k = 0; k < len; k++)
        if (alo(s[i + k]) != lit[k]) return 0;
    return 1;
}

/* \b right after a word character at i-1: true when i is the end or s[i] is not a word char */
static inline int P(word_ends)(const CH *s, Py_ssize_t n, Py_ssize_t i) { return i >= n || !is_word(s[i]); }

static Py_ssize_t P(find_char)(const CH *s, Py_ssize_t n, Py_ssize_t from, Py_UCS4 c) {
    if (from >= n) return -1;
#if CH_SIZE == 1
    const CH *hit = memchr(s + from, (int)c, (size_t)(n - from)); /* c is ASCII */
    return hit ? (Py_ssize_t)(hit - s) : -1;
#elif CH_SIZE == 4 && defined(HAVE_WIDE_SEARCH)
    const wchar_t *hit = wmemchr((const wchar_t *)s + from, (wchar_t)c, (size_t)(n - from));
    return hit ? (Py_ssize_t)(hit - (const wchar_t *)s) : -1;
#else
    for (Py_ssize_t i = from; i < n; i++)
        if (s[i] == c) return i;
    return -1;
#endif
}

/* for (i = P(next_lt)(s, n, from); i >= 0; i = P(next_lt)(s, n, i + 1)): each '<' in turn */
static inline Py_ssize_t P(next_lt)(const CH *s, Py_ssize_t n, Py_ssize_t from) { return P(find_char)(s, n, from, '<'); }

static Py_ssize_t P(skip_spaces)(const CH *s, Py_ssize_t n, Py_ssize_t i) {
    while (i < n && is_space(s[i])) i++;
    return i;
}

static int P(in_html5)(const CH *s, Py_ssize_t len, PyObject **value) {
    PyObject *name = P(to_str)(s, len);
    if (name == NULL) return -1;
    *value = PyDict_GetItemWithError(html5, name);
    Py_DECREF(name);
    if (*value == NULL) return PyErr_Occurred() ? -1 : 0;
    return 1;
}

/* html.unescape over s[0:n], every resulting character passed to emit. Its regex is
 * &(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?) and its replacement _replace_charref. */
/* Inlined at each call with its emit known, so the per-character call goes away. */
static inline __attribute__((always_inline)) int P(unescape)(const CH *s, Py_ssize_t n, emit_fn emit, void *ctx) {
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
        const CH *name = s + j;
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
        int found = P(in_html5)(name, len, &value);
        if (found < 0) return -1;
        if (found) {
            if (emit_str(emit, ctx, value) < 0) return -1;
            continue;
        }
        Py_ssize_t x;
        for (x = len - 1; x > 1; x--) {
            found = P(in_html5)(name, x, &value);
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

/* --- pass: drop invisible elements -------------------------------------------------------
 * <!--.*?(?:-->|\Z)|<(script|style|head|title|noscript|template|object|iframe)\b[^>]*>.*?(?:</\1\s*>|\Z)
 * in the ASCII-lower-cased page (re.S), each match replaced by one space. */

static inline __attribute__((always_inline)) Py_ssize_t P(drop_match)(const CH *s, Py_ssize_t n, Py_ssize_t i) {
    if (P(starts_al)(s, n, i + 1, "!--")) {
        for (Py_ssize_t j = i + 4; j + 2 < n; j++)
            if (s[j] == '-' && s[j + 1] == '-' && s[j + 2] == '>') return j + 3;
        return n;
    }
    for (const Name *drop = DROPPED; drop->name; drop++) {
        const char *name = drop->name;
        Py_ssize_t len = drop->len;
        if (!P(starts_al)(s, n, i + 1, name) || !P(word_ends)(s, n, i + 1 + len)) continue;
        Py_ssize_t gt = P(find_char)(s, n, i + 1 + len, '>');
        if (gt < 0) return -1;
        for (Py_ssize_t j = P(next_lt)(s, n, gt + 1); j >= 0; j = P(next_lt)(s, n, j + 1)) {
            if (j + 1 >= n || s[j + 1] != '/' || !P(starts_al)(s, n, j + 2, name)) continue;
            Py_ssize_t k = P(skip_spaces)(s, n, j + 2 + len);
            if (k < n && s[k] == '>') return k + 1;
        }
        return n;
    }
    return -1;
}

/* Each match of `match` at a '<' replaced by the one character `with`; inlined with its match. */
static inline __attribute__((always_inline)) int P(replace_at_tags)(const CH *s, Py_ssize_t n, P(Buf) *out,
                                                                     Py_ssize_t (*match)(const CH *, Py_ssize_t, Py_ssize_t),
                                                                     Py_UCS4 with) {
    Py_ssize_t last = 0;
    for (Py_ssize_t i = P(next_lt)(s, n, 0); i >= 0; i = P(next_lt)(s, n, i + 1)) {
        Py_ssize_t end = match(s, n, i);
        if (end < 0) continue;
        if (P(buf_write)(out, s + last, i - last) < 0 || P(buf_put)(out, with) < 0) return -1;
        last = end;
        i = end - 1;
    }
    return P(buf_write)(out, s + last, n - last);
}

static int P(drop_invisible)(const P(Buf) *in, P(Buf) *out) { return P(replace_at_tags)(in->p, in->n, out, P(drop_match), ' '); }

/* --- pass: cut elements styled invisible -------------------------------------------------
 * The earliest of display\s*:\s*none, visibility\s*:\s*hidden, mso-hide\s*:\s*all (ASCII
 * case-insensitive) inside an opening tag cuts that element, up to its matching close tag. */

static Py_ssize_t P(style_at)(const CH *s, Py_ssize_t n, Py_ssize_t i) {
    static const char *const words[][2] = {{"display", "none"}, {"visibility", "hidden"}, {"mso-hide", "all"}};
    for (int w = 0; w < 3; w++) {
        const char *word = words[w][0];
        if (alo(s[i]) != (Py_UCS4)word[0] || !P(starts_al)(s, n, i, word)) continue;
        Py_ssize_t k = P(skip_spaces)(s, n, i + (Py_ssize_t)strlen(word));
        if (k >= n || s[k] != ':') return -1;
        k = P(skip_spaces)(s, n, k + 1);
        if (!P(starts_al)(s, n, k, words[w][1])) return -1;
        return k + (Py_ssize_t)strlen(words[w][1]);
    }
    return -1;
}

static Py_ssize_t P(rfind_char)(const CH *s, Py_ssize_t from, Py_ssize_t to, Py_UCS4 c) {
    for (Py_ssize_t i = to - 1; i >= from; i--)
        if (s[i] == c) return i;
    return -1;
}

/* Cuts into out (joined with "\n" as the reference joins its pieces); the cut elements' inner
 * markup goes to hidden as spans of in. Returns 1 when something was cut, 0 when not. */
static int P(strip_hidden)(const P(Buf) *in, P(Buf) *out, Spans *hidden) {
    const CH *s = in->p;
    Py_ssize_t n = in->n, kept_from = 0, pos = 0, cuts = 0;
    for (int round = 0; round < 500; round++) {
        Py_ssize_t style_start = -1, style_end = -1;
        /* every style has a colon, and matches come in the order of their colons (the word and
         * spaces before a colon cannot hold another one): look back from each colon */
        for (Py_ssize_t colon = P(find_char)(s, n, pos, ':'); colon >= 0; colon = P(find_char)(s, n, colon + 1, ':')) {
            Py_ssize_t w = colon;
            while (w > pos && is_space(s[w - 1])) w--;
            Py_UCS4 last = w > pos ? alo(s[w - 1]) : 0;
            if (last != 'y' && last != 'e') continue; /* displaY, visibilitY, mso-hidE */
            Py_ssize_t end = -1;
            if (w - 7 >= pos && (end = P(style_at)(s, n, w - 7)) >= 0) { style_start = w - 7; }
            else if (w - 10 >= pos && (end = P(style_at)(s, n, w - 10)) >= 0) { style_start = w - 10; }
            else if (w - 8 >= pos && (end = P(style_at)(s, n, w - 8)) >= 0) { style_start = w - 8; }
            if (style_start >= 0) { style_end = end; break; }
        }
        if (style_start < 0) break;
        pos = style_end;
        Py_ssize_t lt = P(rfind_char)(s, kept_from, style_start, '<');
        Py_ssize_t gt = P(find_char)(s, n, style_end, '>');
        if (lt < 0 || gt < 0) continue;
        if (P(rfind_char)(s, lt, style_start, '>') >= 0) continue;
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
                if ((Py_ssize_t)strlen(*v) == len && P(starts_al)(s, n, t, *v)) { is_void = 1; break; }
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
        for (Py_ssize_t j = P(next_lt)(s, n, gt + 1); j >= 0; j = P(next_lt)(s, n, j + 1)) {
            int closing = j + 1 < n && s[j + 1] == '/';
            Py_ssize_t at = j + 1 + closing;
            if (!P(starts_al_u)(s, n, at, name, len) || !P(word_ends)(s, n, at + len)) continue;
            Py_ssize_t end = P(find_char)(s, n, at + len, '>');
            if (end < 0) break;
            level += closing ? -1 : 1;
            if (level == 0) { close_start = j; close_end = end + 1; break; }
            j = end;
        }
        PyMem_Free(long_name);
        if (cuts && P(buf_put)(out, '\n') < 0) return -1;
        if (P(buf_write)(out, s + kept_from, lt - kept_from) < 0) return -1;
        if (spans_add(hidden, gt + 1, close_start) < 0) return -1;
        kept_from = pos = close_end;
        cuts++;
    }
    if (!cuts) return 0;
    if (P(buf_put)(out, '\n') < 0 || P(buf_write)(out, s + kept_from, n - kept_from) < 0) return -1;
    return 1;
}

/* --- pass: anchors to marks ---------------------------------------------------------------
 * <a\b[^>]*?\bhref\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]*))[^>]*>|<a\b[^>]*>  becomes OPEN_MARK
 * (its href kept), and </a\s*> becomes CLOSE_MARK, re.IGNORECASE. */

/* \bNAME\s*=\s* at k, inside a tag after its name (so k > 0): where the value starts, or -1 */
static inline __attribute__((always_inline)) Py_ssize_t P(attribute_at)(const CH *s, Py_ssize_t n, Py_ssize_t k, const char *name, Py_ssize_t len) {
    if (!ci(s[k], name[0]) || is_word(s[k - 1]) || !P(starts_ci)(s, n, k, name)) return -1;
    Py_ssize_t m = P(skip_spaces)(s, n, k + len);
    if (m >= n || s[m] != '=') return -1;
    return P(skip_spaces)(s, n, m + 1);
}

static Py_ssize_t P(anchor_open)(const CH *s, Py_ssize_t n, Py_ssize_t i, Py_ssize_t *href_start, Py_ssize_t *href_end) {
    if (i + 1 >= n || !ci(s[i + 1], 'a') || !P(word_ends)(s, n, i + 2)) return -1;
    Py_ssize_t first_gt = P(find_char)(s, n, i + 2, '>');
    if (first_gt < 0) return -1;
    for (Py_ssize_t k = i + 2; k < first_gt; k++) {
        Py_ssize_t v = P(attribute_at)(s, n, k, "href", 4);
        if (v < 0) continue;
        if (v < n && (s[v] == '"' || s[v] == '\'')) {
            Py_ssize_t q = P(find_char)(s, n, v + 1, s[v]);
            if (q >= 0) {
                Py_ssize_t gt = P(find_char)(s, n, q + 1, '>');
                if (gt >= 0) {
                    *href_start = v + 1;
                    *href_end = q;
                    return gt + 1;
                }
            }
        }
        Py_ssize_t e = v;
        while (e < n && s[e] != '>' && !is_space(s[e])) e++;
        Py_ssize_t gt = P(find_char)(s, n, e, '>');
        if (gt >= 0) {
            *href_start = v;
            *href_end = e;
            return gt + 1;
        }
    }
    *href_start = *href_end = -1;
    return first_gt + 1;
}

static Py_ssize_t P(anchor_close)(const CH *s, Py_ssize_t n, Py_ssize_t i) {
    if (i + 2 >= n || s[i + 1] != '/' || !ci(s[i + 2], 'a')) return -1;
    Py_ssize_t k = P(skip_spaces)(s, n, i + 3);
    return (k < n && s[k] == '>') ? k + 1 : -1;
}

static PyObject *P(href_value)(const CH *s, Py_ssize_t start, Py_ssize_t end) {
    if (P(find_char)(s, end, start, '&') < 0) { /* nothing to decode: the stripped slice */
        while (start < end && is_space(s[start])) start++;
        while (end > start && is_space(s[end - 1])) end--;
        return P(to_str)(s + start, end - start);
    }
    Buf b;
    if (buf_init(&b, end - start) < 0) return NULL;
    if (P(unescape)(s + start, end - start, emit_plain, &b) < 0) { buf_free(&b); return NULL; }
    Py_ssize_t a = 0, z = b.n;
    while (a < z && is_space(b.p[a])) a++;
    while (z > a && is_space(b.p[z - 1])) z--;
    PyObject *str = to_str(b.p + a, z - a);
    buf_free(&b);
    return str;
}

/* Anchors replaced by marks; each opening anchor's href appended to hrefs. The two regexes ran
 * one after the other; one scan gives the same, as neither can match inside the other's match. */
static int P(mark_anchors)(const P(Buf) *in, P(Buf) *out, PyObject *hrefs) {
    const CH *s = in->p;
    Py_ssize_t n = in->n, last = 0;
    for (Py_ssize_t i = P(next_lt)(s, n, 0); i >= 0; i = P(next_lt)(s, n, i + 1)) {
        Py_ssize_t hs, he, end = P(anchor_open)(s, n, i, &hs, &he);
        Py_UCS4 mark = OPEN_MARK;
        if (end >= 0) {
            PyObject *href = hs >= 0 ? P(href_value)(s, hs, he) : PyUnicode_New(0, 0);
            if (href == NULL) return -1;
            int failed = PyList_Append(hrefs, href);
            Py_DECREF(href);
            if (failed < 0) return -1;
        } else {
            end = P(anchor_close)(s, n, i);
            if (end < 0) continue;
            mark = CLOSE_MARK;
        }
        if (P(buf_write)(out, s + last, i - last) < 0 || P(buf_put)(out, mark) < 0) return -1;
        last = end;
        i = end - 1;
    }
    return P(buf_write)(out, s + last, n - last);
}

/* --- markup to text -----------------------------------------------------------------------
 * Images to their alt text, block tags to newlines, other tags removed, entities decoded,
 * invisible characters dropped, whitespace normalised: one pass each, in the reference's order. */

/* <img\b[^>]*?\balt\s*=\s*(?:"([^"]*)"|'([^']*)')[^>]*>, re.IGNORECASE */
static Py_ssize_t P(image_alt)(const CH *s, Py_ssize_t n, Py_ssize_t i, Py_ssize_t *alt_start, Py_ssize_t *alt_end) {
    if (!P(starts_ci)(s, n, i + 1, "img") || !P(word_ends)(s, n, i + 4)) return -1;
    Py_ssize_t first_gt = P(find_char)(s, n, i + 4, '>');
    if (first_gt < 0) return -1;
    for (Py_ssize_t k = i + 4; k < first_gt; k++) {
        Py_ssize_t v = P(attribute_at)(s, n, k, "alt", 3);
        if (v < 0 || v >= n || (s[v] != '"' && s[v] != '\'')) continue;
        Py_ssize_t q = P(find_char)(s, n, v + 1, s[v]);
        if (q < 0) continue;
        Py_ssize_t gt = P(find_char)(s, n, q + 1, '>');
        if (gt < 0) continue;
        *alt_start = v + 1;
        *alt_end = q;
        return gt + 1;
    }
    return -1;
}

static int P(images_to_alt)(const CH *s, Py_ssize_t n, P(Buf) *out) {
    Py_ssize_t last = 0;
    for (Py_ssize_t i = P(next_lt)(s, n, 0); i >= 0; i = P(next_lt)(s, n, i + 1)) {
        Py_ssize_t as, ae, end = P(image_alt)(s, n, i, &as, &ae);
        if (end < 0) continue;
        if (P(buf_write)(out, s + last, i - last) < 0 || P(buf_put)(out, '\n') < 0 || P(buf_write)(out, s + as, ae - as) < 0 ||
            P(buf_put)(out, ' ') < 0)
            return -1;
        last = end;
        i = end - 1;
    }
    return P(buf_write)(out, s + last, n - last);
}

/* <(?:br|hr|/?(?:p|div|tr|td|th|li|h[1-6]|table|tbody|thead|ul|ol|blockquote|center|section|article))\b[^>]*>
 * re.IGNORECASE. Every name is word characters followed by \b, so the name is the whole word. */
static inline __attribute__((always_inline)) Py_ssize_t P(block_tag)(const CH *s, Py_ssize_t n, Py_ssize_t i) {
    Py_ssize_t at = i + 1, len = -1;
    if ((P(starts_ci)(s, n, at, "br") || P(starts_ci)(s, n, at, "hr")) && P(word_ends)(s, n, at + 2)) {
        len = 2;
    } else {
        if (at < n && s[at] == '/') at++;
        if (at + 1 < n && ci(s[at], 'h') && s[at + 1] >= '1' && s[at + 1] <= '6' && P(word_ends)(s, n, at + 2)) {
            len = 2;
        } else {
            for (const Name *tag = BLOCK_TAGS; tag->name; tag++)
                if (P(starts_ci)(s, n, at, tag->name) && P(word_ends)(s, n, at + tag->len)) { len = tag->len; break; }
        }
    }
    if (len < 0) return -1;
    Py_ssize_t gt = P(find_char)(s, n, at + len, '>');
    return gt < 0 ? -1 : gt + 1;
}

static int P(blocks_to_newlines)(const CH *s, Py_ssize_t n, P(Buf) *out) {
    return P(replace_at_tags)(s, n, out, P(block_tag), '\n');
}

/* <[^>]*> removed */
static int P(strip_tags)(const CH *s, Py_ssize_t n, P(Buf) *out) {
    Py_ssize_t last = 0;
    for (Py_ssize_t i = P(next_lt)(s, n, 0); i >= 0; i = P(next_lt)(s, n, i + 1)) {
        Py_ssize_t gt = P(find_char)(s, n, i + 1, '>');
        if (gt < 0) break;
        if (P(buf_write)(out, s + last, i - last) < 0) return -1;
        last = gt + 1;
        i = gt;
    }
    return P(buf_write)(out, s + last, n - last);
}

/* The reference's _markup_to_text; the result is stripped of whitespace at both ends. */
static int P(markup_to_text)(const CH *s, Py_ssize_t n, Buf *text) {
    P(Buf) *a = P(scratch_take)(PASS_TEXT_A, n + 16), *b = a ? P(scratch_take)(PASS_TEXT_B, n + 16) : NULL;
    if (b == NULL) return -1;
    /* the reference converts images only when "alt" is in the markup (case-sensitive) */
    int has_alt = 0;
    for (Py_ssize_t i = P(find_char)(s, n, 0, 'a'); i >= 0 && i + 2 < n; i = P(find_char)(s, n, i + 1, 'a'))
        if (s[i + 1] == 'l' && s[i + 2] == 't') { has_alt = 1; break; }
    P(Buf) *cur = a;
    if (has_alt) {
        if (P(images_to_alt)(s, n, b) < 0) return -1;
        if (P(blocks_to_newlines)(b->p, b->n, a) < 0) return -1;
    } else if (P(blocks_to_newlines)(s, n, a) < 0) {
        return -1;
    }
    b->n = 0;
    if (P(strip_tags)(a->p, a->n, b) < 0) return -1;
    cur = b;
    text->n = 0;
    if (buf_reserve(text, cur->n) < 0) return -1;
    return P(unescape)(cur->p, cur->n, normalise_space, text);
}

/* html_to_text for a str of this kind (the passes run on its own code units; only the decoded
 * text, where entities may bring any character, is built in code points). */
static PyObject *P(html_to_text)(PyObject *arg, Py_ssize_t offset) {
    PyObject *result = NULL, *hrefs = NULL, *text = NULL, *hidden_text = NULL, *spans = NULL;
    P(Buf) *work = NULL, *cut_page = NULL, *out = NULL;
    Buf *piece = NULL, *final = NULL;
    Spans hidden = {0};
    Py_ssize_t n = PyUnicode_GET_LENGTH(arg);
    const CH *page = (const CH *)PyUnicode_DATA(arg);
    if ((work = P(scratch_take)(PASS_WORK, n + 16)) == NULL || (cut_page = P(scratch_take)(PASS_CUT, n + 16)) == NULL ||
        (out = P(scratch_take)(PASS_OUT, n + 16)) == NULL || (piece = scratch_take(SCRATCH_PIECE, 64)) == NULL ||
        (final = scratch_take(SCRATCH_FINAL, 64)) == NULL)
        goto done;
    /* the page's own marks go first: ours must be the only ones */
    if (PyUnicode_FindChar(arg, OPEN_MARK, 0, n, 1) != -1 || PyUnicode_FindChar(arg, CLOSE_MARK, 0, n, 1) != -1) {
        for (Py_ssize_t i = 0; i < n; i++)
            if (page[i] != OPEN_MARK && page[i] != CLOSE_MARK) out->p[out->n++] = page[i];
        page = out->p;
        n = out->n;
    }
    P(Buf) source = {(CH *)page, n, n};
    if (P(drop_invisible)(&source, work) < 0) goto done;
    int cut = P(strip_hidden)(work, cut_page, &hidden);
    if (cut < 0) goto done;
    P(Buf) *markup = cut ? cut_page : work; /* work keeps the hidden spans' source either way */
    hrefs = PyList_New(0);
    if (hrefs == NULL) goto done;
    out->n = 0;
    if (P(mark_anchors)(markup, out, hrefs) < 0) goto done;
    /* hidden text: each cut element's markup to text, joined by newlines */
    for (Py_ssize_t h = 0; h < hidden.n; h++) {
        if (P(markup_to_text)(work->p + hidden.p[h].start, hidden.p[h].end - hidden.p[h].start, piece) < 0) goto done;
        Py_ssize_t a, z;
        strip_ends(piece, &a, &z);
        if ((h && buf_put(final, '\n') < 0) || buf_write(final, piece->p + a, z - a) < 0) goto done;
    }
    hidden_text = to_str(final->p, final->n);
    if (hidden_text == NULL) goto done;
    if (P(markup_to_text)(out->p, out->n, piece) < 0) goto done;
    Py_ssize_t a, z;
    strip_ends(piece, &a, &z);
    /* marks out; each anchor's span in the text without marks */
    spans = PyList_New(0);
    if (spans == NULL) goto done;
    Py_ssize_t count = PyList_GET_SIZE(hrefs);
    Py_ssize_t index = -1, open_at = -1;
    final->n = 0;
    for (Py_ssize_t i = a; i < z; i++) {
        Py_UCS4 c = piece->p[i];
        if (c != OPEN_MARK && c != CLOSE_MARK) {
            if (buf_put(final, c) < 0) goto done;
            continue;
        }
        if (!count) continue;
        Py_ssize_t at = final->n;
        if (open_at >= 0) {
            PyObject *span = anchor_entry(PyList_GET_ITEM(hrefs, index), final, open_at, at, offset);
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
        PyObject *span = anchor_entry(PyList_GET_ITEM(hrefs, index), final, open_at, final->n, offset);
        if (span == NULL || PyList_Append(spans, span) < 0) { Py_XDECREF(span); goto done; }
        Py_DECREF(span);
    }
    text = to_str(final->p, final->n);
    if (text == NULL) goto done;
    result = PyTuple_Pack(3, text, hidden_text, spans);
done:
    Py_XDECREF(hrefs);
    Py_XDECREF(text);
    Py_XDECREF(hidden_text);
    Py_XDECREF(spans);
    P(scratch_trim)();
    scratch_trim();
    PyMem_Free(hidden.p);
    return result;
}
