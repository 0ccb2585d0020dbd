#include "common/cpu_info.h"

#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace anoclip {

CpuInfo ReadCpuInfo() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  CpuInfo cpu;
  std::string line;
  while (std::getline(cpuinfo, line) && (cpu.model_name.empty() || cpu.flags.empty())) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string key(absl::StripAsciiWhitespace(line.substr(0, colon)));
    const std::string value(absl::StripAsciiWhitespace(line.substr(colon + 1)));
    if (key == "model name" && cpu.model_name.empty()) cpu.model_name = value;
    if (key == "flags" && cpu.flags.empty()) cpu.flags = value;
  }
  return cpu;
}

std::string PrecisionFlags(const CpuInfo& cpu) {
  const std::string flags = " " + cpu.flags + " ";
  std::string present;
  for (const char* flag : {"avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8"}) {
    if (flags.find(absl::StrCat(" ", flag, " ")) != std::string::npos) {
      absl::StrAppend(&present, present.empty() ? "" : " ", flag);
    }
  }
  return present;
}

}  // namespace anoclip
