/* wino4_tf.h: the 1-D transforms of Winograd F(4x4,3x3) at the points 0, 1,
 * -1, 1/2, -2, inf (matrices in conv_wino4.c's header), on 16-lane vectors;
 * shared by conv_wino4.c (tiles in the lanes) and conv_wl4.c (channels in the
 * lanes).  Include after <immintrin.h>, on x86-64 with GCC/Clang only. */
#ifndef EENET_WINO4_TF_H
#define EENET_WINO4_TF_H

#define WINO4_TF static inline __attribute__((target("avx512f"), always_inline))

/* o = x B (the 6 columns of B^T applied to x0..x5), 18 operations, with
 * c = x4 - x2, d = x3 - x1:
 *   o0 = (x0 + x4) - 2x2 + 3/2 d       o3 = c + 2d
 *   o1 = (c + d) + 3/2 (x2 + x3)       o4 = c - 1/2 d
 *   o2 = (c - d) + 3/2 (x3 - x2)       o5 = (x1 + x5) - 2x3 + 3/2 c */
WINO4_TF void bt6(__m512 o[6], __m512 x0, __m512 x1, __m512 x2, __m512 x3, __m512 x4,
                   __m512 x5) {
    const __m512 c15 = _mm512_set1_ps(1.5f), c2 = _mm512_set1_ps(2.0f);
    const __m512 ch = _mm512_set1_ps(0.5f);
    __m512 c = _mm512_sub_ps(x4, x2);
    __m512 d = _mm512_sub_ps(x3, x1);
    o[0] = _mm512_fmadd_ps(c15, d, _mm512_fnmadd_ps(c2, x2, _mm512_add_ps(x0, x4)));
    o[1] = _mm512_fmadd_ps(c15, _mm512_add_ps(x2, x3), _mm512_add_ps(c, d));
    o[2] = _mm512_fmadd_ps(c15, _mm512_sub_ps(x3, x2), _mm512_sub_ps(c, d));
    o[3] = _mm512_fmadd_ps(c2, d, c);
    o[4] = _mm512_fnmadd_ps(ch, d, c);
    o[5] = _mm512_fmadd_ps(c15, c, _mm512_fnmadd_ps(c2, x3, _mm512_add_ps(x1, x5)));
}

/* o = A^T x (4 from 6), 12 operations:
 *   o0 = x0 + (x1 + x2) + x3 + x4      o2 = (x1 + x2) + 1/4 x3 + 4 x4
 *   o1 = (x1 - x2) + 1/2 x3 - 2 x4     o3 = (x1 - x2) + 1/8 x3 - 8 x4 + x5 */
WINO4_TF void at6(__m512 o[4], __m512 x0, __m512 x1, __m512 x2, __m512 x3, __m512 x4,
                   __m512 x5) {
    __m512 s12 = _mm512_add_ps(x1, x2), d12 = _mm512_sub_ps(x1, x2);
    o[0] = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(x0, s12), x3), x4);
    o[1] = _mm512_fnmadd_ps(_mm512_set1_ps(2.0f), x4,
                            _mm512_fmadd_ps(_mm512_set1_ps(0.5f), x3, d12));
    o[2] = _mm512_fmadd_ps(_mm512_set1_ps(4.0f), x4,
                           _mm512_fmadd_ps(_mm512_set1_ps(0.25f), x3, s12));
    o[3] = _mm512_add_ps(_mm512_fnmadd_ps(_mm512_set1_ps(8.0f), x4,
                                          _mm512_fmadd_ps(_mm512_set1_ps(0.125f), x3, d12)),
                         x5);
}

#endif /* EENET_WINO4_TF_H */
