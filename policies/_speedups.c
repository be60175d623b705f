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

/* --- buffers ------------------------------------------------------------------------------ */

/* Scratch buffers kept from call to call: fresh page-sized buffers for every pass cost more in
 * page faults than the passes themselves. Not reentrant, and need not be: the GIL is held and no
 * Python code runs inside html_to_text. Buffers grown past SCRATCH_KEEP are freed after a call.
 * The passes use the page's kind; PIECE and FINAL hold code points (the decoded text). */
#define SCRATCH_KEEP ((Py_ssize_t)1 << 18) /* units: a 256 K-character page */
enum { PASS_WORK, PASS_CUT, PASS_OUT, PASS_TEXT_A, PASS_TEXT_B, SCRATCH_PIECE, SCRATCH_FINAL, SCRATCH_COUNT };

#define KIND_FILE "_speedups_buf.h"
#include "_speedups_kinds.h"

/* code points: entities can decode to any character */
#define Buf Buf_ucs4
#define buf_init buf_init_ucs4
#define buf_free buf_free_ucs4
#define buf_reserve buf_reserve_ucs4
#define buf_put buf_put_ucs4
#define buf_write buf_write_ucs4
#define to_str to_str_ucs4
#define scratch_take scratch_take_ucs4
#define scratch_trim scratch_trim_ucs4

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

static inline int name_char(Py_UCS4 c) {
    return !(c == '\t' || c == '\n' || c == '\f' || c == ' ' || c == '<' || c == '&' || c == '#' || c == ';');
}

static inline int hex_value(Py_UCS4 c) {
    if (c >= '0' && c <= '9') return (int)(c - '0');
    if (c >= 'a' && c <= 'f') return (int)(c - 'a' + 10);
    if (c >= 'A' && c <= 'F') return (int)(c - 'A' + 10);
    return -1;
}

static inline __attribute__((always_inline)) int emit_plain(void *ctx, Py_UCS4 c) { return buf_put((Buf *)ctx, c); }

/* --- tables of the HTML passes (_speedups_html.h) ------------------------------------------ */

typedef struct {
    const char *name;
    Py_ssize_t len;
} Name;
#define NAME(literal) {literal, (Py_ssize_t)sizeof(literal) - 1}

static const Name DROPPED[] = {NAME("script"), NAME("style"), NAME("head"), NAME("title"), NAME("noscript"),
                               NAME("template"), NAME("object"), NAME("iframe"), {NULL, 0}};

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

static const Name BLOCK_TAGS[] = {NAME("p"),     NAME("div"),   NAME("tr"), NAME("td"), NAME("th"),
                                  NAME("li"),    NAME("table"), NAME("tbody"), NAME("thead"), NAME("ul"),
                                  NAME("ol"),    NAME("blockquote"), NAME("center"), NAME("section"),
                                  NAME("article"), {NULL, 0}};

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

/* the passes, once per kind of str */
#define KIND_FILE "_speedups_html.h"
#include "_speedups_kinds.h"

static PyObject *html_to_text(PyObject *module, PyObject *args) {
    PyObject *arg;
    Py_ssize_t offset = -1;
    if (!PyArg_ParseTuple(args, "U|n:html_to_text", &arg, &offset)) return NULL;
    if (offset < -1) {
        PyErr_SetString(PyExc_ValueError, "html_to_text(): offset must not be negative");
        return NULL;
    }
    switch (PyUnicode_KIND(arg)) {
    case PyUnicode_1BYTE_KIND: return html_to_text_ucs1(arg, offset);
    case PyUnicode_2BYTE_KIND: return html_to_text_ucs2(arg, offset);
    default: return html_to_text_ucs4(arg, offset);
    }
}

/* --- words --------------------------------------------------------------------------------- */

/* \w among ASCII characters: letters, digits, underscore */
static const unsigned char ASCII_WORD[128] = {
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1, ['I'] = 1, ['J'] = 1,
    ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1,
    ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1, ['_'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1,
    ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1,
    ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

static inline int word_char(Py_UCS4 c) { return c < 128 ? ASCII_WORD[c] : is_word(c); }

/* The next \w+ run at or after *at: its start (n when none is left), with *at moved past its end
 * and *hash its FNV-1a hash over the code points. The one word scanner of words_of and
 * known_words_of, so both split and hash a text alike. */
static inline __attribute__((always_inline)) Py_ssize_t
next_word(int kind, const char *data, Py_ssize_t n, Py_ssize_t *at, uint64_t *hash) {
    Py_ssize_t i = *at;
    while (i < n && !word_char(PyUnicode_READ(kind, data, i))) i++;
    Py_ssize_t start = i;
    uint64_t h = 14695981039346656037ULL;
    for (; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (!word_char(c)) break;
        h = (h ^ c) * 1099511628211ULL;
    }
    *at = i;
    *hash = h;
    return start;
}

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
    for (Py_ssize_t i = 0;;) {
        uint64_t hash;
        Py_ssize_t start = next_word(kind, data, n, &i, &hash);
        if (start >= n) break;
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

/* NAME(str), a METH_O function, calling NAME_of(arg, kind) inlined for each kind */
#define STR_FUNCTION(NAME)                                                          \
    static PyObject *NAME(PyObject *module, PyObject *arg) {                        \
        if (!PyUnicode_Check(arg)) {                                                \
            PyErr_SetString(PyExc_TypeError, #NAME "() takes a str");               \
            return NULL;                                                            \
        }                                                                           \
        if (PyUnicode_READY(arg) < 0) return NULL;                                  \
        int kind = PyUnicode_KIND(arg);                                             \
        PER_KIND(kind, NAME##_of_arg)                                               \
    }
#define words_of_arg(kind) words_of(arg, kind)
STR_FUNCTION(words)

/* --- words of a vocabulary ------------------------------------------------------------------ */

/* The content rules test a text's words against a few hundred listed words (and drug spellings):
 * words(text) makes a str of every distinct word only for most to be found in no list. A vocabulary
 * keeps the listed words in a table under the same hash words() computes over a run's code points
 * (FNV-1a), so a run is looked up where it stands and a str is made for none: known_words(text,
 * vocabulary) is words(text) & set(vocabulary), read off in one pass. */
typedef struct {
    uint64_t hash;
    uint32_t len; /* 0: an empty slot */
    uint32_t at;  /* the word's code points in Vocabulary.points */
} VocabSlot;

/* Most runs of a page are in no list: a bitmap of the words' hashes (16 bits a word, about one run
 * in sixteen passes wrongly) turns them away after one read of a few kilobytes, where the table of
 * slots is tens. */
typedef struct {
    size_t cap;     /* slots: a power of two, at least twice the words */
    size_t bits;    /* bitmap bits: a power of two, at least sixteen times the words */
    VocabSlot *slots;
    PyObject **words; /* the listed str of each slot, the one returned */
    uint64_t *bitmap;
    Py_UCS4 *points;
} Vocabulary;

#define VOCABULARY_CAPSULE "policies._speedups.vocabulary"
#define BITMAP_BIT(v, hash) (((hash) >> 32) & ((v)->bits - 1))

static void vocabulary_clear(Vocabulary *v) {
    if (v->words != NULL)
        for (size_t k = 0; k < v->cap; k++) Py_XDECREF(v->words[k]);
    PyMem_Free(v->slots);
    PyMem_Free(v->words);
    PyMem_Free(v->bitmap);
    PyMem_Free(v->points);
    PyMem_Free(v);
}

static void vocabulary_free(PyObject *capsule) {
    Vocabulary *v = PyCapsule_GetPointer(capsule, VOCABULARY_CAPSULE);
    if (v != NULL) vocabulary_clear(v);
}

static PyObject *vocabulary(PyObject *module, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "vocabulary() takes an iterable of str");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), total = 0;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t k = 0; k < n; k++) {
        if (!PyUnicode_Check(items[k]) || PyUnicode_READY(items[k]) < 0) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "vocabulary() takes an iterable of str");
            Py_DECREF(seq);
            return NULL;
        }
        total += PyUnicode_GET_LENGTH(items[k]);
    }
    if (total >= (Py_ssize_t)UINT32_MAX) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "vocabulary() of too many characters");
        return NULL;
    }
    Vocabulary *v = PyMem_Calloc(1, sizeof(Vocabulary));
    size_t cap = 16, bits = 64;
    while (cap < (size_t)n * 2 + 2) cap *= 2;
    while (bits < (size_t)n * 16) bits *= 2;
    if (v != NULL) {
        v->cap = cap;
        v->bits = bits;
        v->slots = PyMem_Calloc(cap, sizeof(VocabSlot));
        v->words = PyMem_Calloc(cap, sizeof(PyObject *));
        v->bitmap = PyMem_Calloc(bits / 64, sizeof(uint64_t));
        v->points = PyMem_Calloc((size_t)total + 1, sizeof(Py_UCS4));
    }
    if (v == NULL || v->slots == NULL || v->words == NULL || v->bitmap == NULL || v->points == NULL) {
        if (v != NULL) vocabulary_clear(v);
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    uint32_t at = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *word = items[k];
        Py_ssize_t len = PyUnicode_GET_LENGTH(word);
        if (len == 0) continue; /* no run is empty */
        int kind = PyUnicode_KIND(word);
        const void *data = PyUnicode_DATA(word);
        uint64_t hash = 14695981039346656037ULL; /* as known_words hashes a run */
        for (Py_ssize_t i = 0; i < len; i++) {
            Py_UCS4 c = PyUnicode_READ(kind, data, i);
            v->points[at + i] = c;
            hash = (hash ^ c) * 1099511628211ULL;
        }
        size_t slot = (size_t)hash & (cap - 1);
        int duplicate = 0;
        while (v->slots[slot].len) {
            VocabSlot *e = &v->slots[slot];
            if (e->hash == hash && e->len == (uint32_t)len &&
                memcmp(v->points + e->at, v->points + at, (size_t)len * sizeof(Py_UCS4)) == 0) {
                duplicate = 1;
                break;
            }
            slot = (slot + 1) & (cap - 1);
        }
        if (duplicate) continue;
        Py_INCREF(word);
        v->slots[slot] = (VocabSlot){hash, (uint32_t)len, at};
        v->words[slot] = word;
        size_t bit = BITMAP_BIT(v, hash);
        v->bitmap[bit / 64] |= (uint64_t)1 << (bit % 64);
        at += (uint32_t)len;
    }
    Py_DECREF(seq);
    PyObject *capsule = PyCapsule_New(v, VOCABULARY_CAPSULE, vocabulary_free);
    if (capsule == NULL) vocabulary_clear(v);
    return capsule;
}

/* A code point whose UTF-16 high byte is one of policies.wordlists' scripts without spaces
 * (U+3000-9FFF, U+AC00-D7FF, U+F900-FAFF: _NOT_UNSPACED_HIGH keeps those high bytes). */
static inline int unspaced_point(Py_UCS4 c) {
    if (c < 0x3000 || c > 0xffff) return 0;
    unsigned high = c >> 8;
    return high <= 0x9f || (high >= 0xac && high <= 0xd7) || high == 0xf9 || high == 0xfa;
}

static inline __attribute__((always_inline)) PyObject *known_words_of(PyObject *arg, const Vocabulary *v, int kind) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(arg);
    const char *data = PyUnicode_DATA(arg);
    const size_t mask = v->cap - 1;
    int unspaced = 0;
    PyObject *found = NULL; /* a set, made on the first word found: most texts have none */
    for (Py_ssize_t i = 0;;) {
        uint64_t hash;
        Py_ssize_t start = next_word(kind, data, n, &i, &hash);
        if (start >= n) break;
        Py_ssize_t len = i - start;
        if (kind != PyUnicode_1BYTE_KIND)
            for (Py_ssize_t k = start; k < i && !unspaced; k++) unspaced = unspaced_point(PyUnicode_READ(kind, data, k));
        size_t bit = BITMAP_BIT(v, hash);
        if (!(v->bitmap[bit / 64] >> (bit % 64) & 1)) continue;
        for (size_t slot = (size_t)hash & mask; v->slots[slot].len; slot = (slot + 1) & mask) {
            const VocabSlot *e = &v->slots[slot];
            if (e->hash != hash || (Py_ssize_t)e->len != len) continue;
            const Py_UCS4 *points = v->points + e->at;
            Py_ssize_t k = 0;
            while (k < len && PyUnicode_READ(kind, data, start + k) == points[k]) k++;
            if (k == len) {
                if (found == NULL && (found = PySet_New(NULL)) == NULL) return NULL;
                if (PySet_Add(found, v->words[slot]) < 0) { Py_DECREF(found); return NULL; }
                break;
            }
        }
    }
    PyObject *frozen = PyFrozenSet_New(found);
    Py_XDECREF(found);
    if (frozen == NULL) return NULL;
    return Py_BuildValue("(NO)", frozen, unspaced ? Py_True : Py_False);
}

static PyObject *known_words(PyObject *module, PyObject *args) {
    PyObject *text, *capsule;
    if (!PyArg_ParseTuple(args, "UO:known_words", &text, &capsule)) return NULL;
    if (!PyCapsule_IsValid(capsule, VOCABULARY_CAPSULE)) {
        PyErr_SetString(PyExc_TypeError, "known_words() takes a vocabulary() table");
        return NULL;
    }
    const Vocabulary *v = PyCapsule_GetPointer(capsule, VOCABULARY_CAPSULE);
    if (v == NULL) return NULL;
    if (PyUnicode_READY(text) < 0) return NULL;
    switch (PyUnicode_KIND(text)) {
    case PyUnicode_1BYTE_KIND: return known_words_of(text, v, PyUnicode_1BYTE_KIND);
    case PyUnicode_2BYTE_KIND: return known_words_of(text, v, PyUnicode_2BYTE_KIND);
    default: return known_words_of(text, v, PyUnicode_4BYTE_KIND);
    }
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

#define urls_of_arg(kind) urls_of(arg, kind)
STR_FUNCTION(urls)

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
        if (c < 128) { /* an ASCII stretch: room for the rest of the text, then no more checks */
            if (buf_reserve(out, n - i) < 0) goto fail;
            Py_UCS4 *to = out->p + out->n;
            do {
                *to++ = alo(c);
                if (++i >= n) break;
                c = PyUnicode_READ(kind, data, i);
            } while (c < 128);
            out->n = to - out->p;
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
        } else if (i + 1 < n && hex_value(c) >= 0 && hex_value(s[i + 1]) >= 0) {
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
    {"vocabulary", vocabulary, METH_O,
     "vocabulary(words) -> an opaque table of the distinct words, for known_words."},
    {"known_words", known_words, METH_VARARGS,
     "known_words(text, vocabulary) -> (words(text) & the vocabulary's words, whether a word of text has a "
     "character of U+3000-9FFF, U+AC00-D7FF or U+F900-FAFF)."},
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
