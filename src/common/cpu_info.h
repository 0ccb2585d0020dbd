// What /proc/cpuinfo says of the CPU the process runs on (its first processor).
#pragma once

#include <string>

namespace anoclip {

struct CpuInfo {
  std::string model_name;  // "AMD EPYC", "Intel(R) Xeon(R) Platinum 8480+"; empty where unknown
  std::string flags;       // the kernel's flag list, space-separated
};
CpuInfo ReadCpuInfo();

// Which of the instruction sets that speed up reduced precision the CPU has, space-separated in a
// fixed order: avx512f avx512_bf16 avx512_vnni avx_vnni amx_tile amx_bf16 amx_int8.
std::string PrecisionFlags(const CpuInfo& cpu);

}  // namespace anoclip
