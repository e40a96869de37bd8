// The instruction sets the CPU kernels are written for, and the widest one this CPU runs, decided
// at run time from what it reports (cpuid): each kernel is compiled for every ISA behind a target
// attribute and the caller picks one, so one binary runs everywhere. No torch.
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define JANUS_X86 1
#define JANUS_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))
#define JANUS_AVX512_BF16 __attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl,avx2,fma")))
#define JANUS_AVX512_VNNI __attribute__((target("avx512vnni,avx512f,avx512bw,avx512vl,avx2,fma")))
#define JANUS_AVX2 __attribute__((target("avx2,fma")))
#define JANUS_AMX \
  __attribute__((target("amx-tile,amx-int8,amx-bf16,avx512bf16,avx512vnni,avx512f,avx512bw,avx512vl,avx2,fma")))
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#else
#define JANUS_X86 0
#endif

namespace janus_fast {
namespace core {

// kAmx: AVX-512 BF16 and VNNI plus the AMX tile unit (tile products of bf16 pairs and int8 quads,
// core/small_gemm.h), which the kernel lets this process use.
enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3, kAmx = 4 };

// The CPU reports AMX (tiles, int8 and bf16 products; cpuid leaf 7) and Linux lets this process use
// the tile data registers (arch_prctl ARCH_REQ_XCOMP_PERM: the permission is process-wide and asked
// once). False elsewhere: another OS, an older kernel, or a CPU without AMX.
inline bool amx_usable() {
#if JANUS_X86 && defined(__linux__)
  static const bool usable = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
    const bool amx_bf16 = (edx >> 22) & 1u, amx_tile = (edx >> 24) & 1u, amx_int8 = (edx >> 25) & 1u;
    if (!(amx_bf16 && amx_tile && amx_int8)) return false;
    constexpr long kRequestPermission = 0x1023, kTileData = 18;  // ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
    return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
  }();
  return usable;
#else
  return false;
#endif
}

// The widest kernel this CPU runs, from what it reports (cpuid).
inline Isa detect_isa() {
#if JANUS_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl"))
  {
    if (!__builtin_cpu_supports("avx512bf16")) return Isa::kAvx512;
    return __builtin_cpu_supports("avx512vnni") && amx_usable() ? Isa::kAmx : Isa::kAvx512Bf16;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kScalar;
}

// AVX-512 VNNI (vpdpbusd: four uint8 x int8 products summed into each int32 lane), which the int8
// products use where the Isa is AVX-512; independent of AVX-512 BF16 (some CPUs have one only).
inline bool has_avx512_vnni() {
#if JANUS_X86
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") != 0;
  }();
  return has;
#else
  return false;
#endif
}

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAmx: return "amx";
    case Isa::kAvx512Bf16: return "avx512_bf16";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace core
}  // namespace janus_fast
