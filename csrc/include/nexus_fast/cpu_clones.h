// NEXUS_FAST_CPU_CLONES: build a hot CPU loop for AVX-512, AVX2 and baseline x86-64 and pick one
// when the library loads. The extension is compiled for baseline x86-64, which would otherwise
// cap its loops at SSE2.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#define NEXUS_FAST_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define NEXUS_FAST_CPU_CLONES
#endif
