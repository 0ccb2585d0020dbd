// ANOCLIP_VECTOR_CLONES before a hot loop's function builds it for AVX-512 and AVX2 beside the
// project's baseline (x86-64's 4-wide vectors), and the CPU picks one when the program loads
// (GCC's and Clang's target_clones). Where the compiler or the architecture has no such clones,
// the baseline alone; under ThreadSanitizer too, whose instrumented clone resolvers run before its
// runtime is up and crash the program at load.
#pragma once

#if defined(__x86_64__) && defined(__has_attribute) && !defined(__SANITIZE_THREAD__)
#if __has_attribute(target_clones)
#define ANOCLIP_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef ANOCLIP_VECTOR_CLONES
#define ANOCLIP_VECTOR_CLONES
#endif
