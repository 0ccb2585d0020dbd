// The text bank's cache-file reader on arbitrary files placed where a cached class would be: it
// must serve verified features or rebuild, never crash or serve features that fail their checks.
#include <ATen/ATen.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>

#include "anomaly/text_bank.h"
#include "fuzz_input_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using anoclip::anomaly::PromptSpec;
  using anoclip::anomaly::TextBank;
  using anoclip::anomaly::TextFeatures;
  static const std::string dir = [] {
    std::string d = anoclip::fuzz::InputFile(".text-cache");
    std::filesystem::create_directories(d);
    return d;
  }();
  // A fresh bank each run, so the answer comes from the file, not memory.
  int builds = 0;
  auto bank = TextBank::Create({4, dir, "fuzz-model"},
                               [&builds](const PromptSpec&, const std::function<absl::Status()>&) {
                                 ++builds;
                                 return absl::StatusOr<TextFeatures>(TextFeatures{at::ones({2, 4}), at::ones({6, 4})});
                               })
                  .value();
  PromptSpec spec;
  spec.class_name = "bottle";
  anoclip::fuzz::WriteInputFile(bank->CachePath(spec), data, size);
  auto features = bank->Get(spec);
  if (!features.ok()) std::abort();  // a bad file is rebuilt, never an error
  const auto& f = (*features)->features;
  const auto& p = (*features)->prompts;
  if (f.dim() != 2 || f.size(0) != 2 || p.dim() != 2 || p.size(1) != f.size(1)) std::abort();
  volatile double sum = f.sum().item<double>() + p.sum().item<double>();
  (void)sum;
  return 0;
}
