/* Includes KIND_FILE once per kind of str, with CH (the code unit), CH_SIZE (its bytes), CH_KIND
 * (its PyUnicode kind) and P(name) (the name with the kind's suffix: _ucs1, _ucs2, _ucs4). */
#define CH Py_UCS1
#define CH_SIZE 1
#define CH_KIND PyUnicode_1BYTE_KIND
#define P(name) name##_ucs1
#include KIND_FILE
#undef CH
#undef CH_SIZE
#undef CH_KIND
#undef P
#define CH Py_UCS2
#define CH_SIZE 2
#define CH_KIND PyUnicode_2BYTE_KIND
#define P(name) name##_ucs2
#include KIND_FILE
#undef CH
#undef CH_SIZE
#undef CH_KIND
#undef P
#define CH Py_UCS4
#define CH_SIZE 4
#define CH_KIND PyUnicode_4BYTE_KIND
#define P(name) name##_ucs4
#include KIND_FILE
#undef CH
#undef CH_SIZE
#undef CH_KIND
#undef P
#undef KIND_FILE
