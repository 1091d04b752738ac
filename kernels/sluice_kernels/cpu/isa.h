// Which instruction-set path this build of the kernels is, and the op namespace it registers.
//
// The same sources are compiled once per ISA path (kernels/sluice_kernels/cpu/__init__.py: one set of -m flags
// and one namespace each, e.g. torch.ops.sluice_cpu_avx2 / torch.ops.sluice_cpu_avx512_vnni), so
// several paths can sit in one process: the engine loads the best one the CPU allows and the tests
// compare every path the machine supports against the same reference.
#pragma once

#include <torch/library.h>

#ifndef SLUICE_OPS_NS
#define SLUICE_OPS_NS sluice_cpu_avx2
#endif

// torch's registration macros paste their namespace argument, which stops macro expansion: one more
// level lets SLUICE_OPS_NS expand first.
#define SLUICE_LIBRARY_(ns, m) TORCH_LIBRARY(ns, m)
#define SLUICE_LIBRARY(m) SLUICE_LIBRARY_(SLUICE_OPS_NS, m)
#define SLUICE_FRAGMENT_(ns, m) TORCH_LIBRARY_FRAGMENT(ns, m)
#define SLUICE_FRAGMENT(m) SLUICE_FRAGMENT_(SLUICE_OPS_NS, m)
#define SLUICE_IMPL_(ns, m) TORCH_LIBRARY_IMPL(ns, CPU, m)
#define SLUICE_IMPL(m) SLUICE_IMPL_(SLUICE_OPS_NS, m)

// Integer dot products of unsigned bytes with signed bytes, summed in groups of four into int32
// lanes: one VNNI instruction where the CPU has it, else AVX2's two-step maddubs + madd. The VNNI
// form also cannot saturate (maddubs clips its int16 pair sums).
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define SLUICE_VNNI 1
inline __m256i dpbusd(__m256i acc, __m256i u8, __m256i s8) { return _mm256_dpbusd_epi32(acc, u8, s8); }
#else
#define SLUICE_VNNI 0
inline __m256i dpbusd(__m256i acc, __m256i u8, __m256i s8) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u8, s8), _mm256_set1_epi16(1)));
}
#endif
