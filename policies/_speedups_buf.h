/* Growable buffers of one code unit, and the scratch buffers kept between calls, included by
 * _speedups.c once per kind through _speedups_kinds.h. */

typedef struct {
    CH *p;
    Py_ssize_t n;
    Py_ssize_t cap;
} P(Buf);

static __attribute__((unused)) int P(buf_init)(P(Buf) *b, Py_ssize_t cap) {
    if (cap < 16) cap = 16;
    b->p = PyMem_Malloc(sizeof(CH) * (size_t)cap);
    b->n = 0;
    b->cap = cap;
    if (b->p == NULL) { PyErr_NoMemory(); return -1; }
    return 0;
}

static void P(buf_free)(P(Buf) *b) {
    PyMem_Free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

static int P(buf_reserve)(P(Buf) *b, Py_ssize_t extra) {
    if (b->n + extra <= b->cap) return 0;
    Py_ssize_t cap = b->cap * 2;
    if (cap < b->n + extra) cap = b->n + extra;
    if (cap < 16) cap = 16;
    CH *p = PyMem_Realloc(b->p, sizeof(CH) * (size_t)cap);
    if (p == NULL) { PyErr_NoMemory(); return -1; }
    b->p = p;
    b->cap = cap;
    return 0;
}

/* c must fit CH: an ASCII character or one of the page's own */
static inline __attribute__((always_inline)) int P(buf_put)(P(Buf) *b, Py_UCS4 c) {
    if (b->n == b->cap && P(buf_reserve)(b, 1) < 0) return -1;
    b->p[b->n++] = (CH)c;
    return 0;
}

static int P(buf_write)(P(Buf) *b, const CH *s, Py_ssize_t n) {
    if (n <= 0) return 0;
    if (P(buf_reserve)(b, n) < 0) return -1;
    memcpy(b->p + b->n, s, sizeof(CH) * (size_t)n);
    b->n += n;
    return 0;
}

static PyObject *P(to_str)(const CH *s, Py_ssize_t n) { return PyUnicode_FromKindAndData(CH_KIND, s, n); }

static P(Buf) P(scratch)[SCRATCH_COUNT];

static P(Buf) *P(scratch_take)(int which, Py_ssize_t cap) {
    P(Buf) *b = &P(scratch)[which];
    b->n = 0;
    return P(buf_reserve)(b, cap) < 0 ? NULL : b;
}

static void P(scratch_trim)(void) {
    for (int i = 0; i < SCRATCH_COUNT; i++)
        if (P(scratch)[i].cap > SCRATCH_KEEP) P(buf_free)(&P(scratch)[i]);
}
