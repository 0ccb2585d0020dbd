// Packed weights' memory (model/huge_pages.h): a 2 MiB-aligned mapping advised for huge pages,
// usable as a tensor, unmapped with its last tensor.
#include "model/huge_pages.h"

#include <torch/torch.h>

#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

namespace anoclip::model {
namespace {

constexpr int64_t kMiB = int64_t{1} << 20;

// The VmFlags line of the mapping of /proc/self/smaps that holds `address`; nullopt where none does.
std::optional<std::string> VmFlagsAt(uintptr_t address) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    uintptr_t begin = 0, end = 0;
    char dash = 0;
    std::istringstream range(line);
    if (range >> std::hex >> begin >> dash >> end && dash == '-') {
      inside = begin <= address && address < end;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line;
    }
  }
  return std::nullopt;
}

std::string TransparentHugePageMode() {
  std::ifstream mode("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  std::getline(mode, line);
  return line;  // e.g. "always [madvise] never"
}

TEST(HugePagesTest, LargeTensorStartsOnAHugePageAndHoldsItsBytes) {
  const int64_t bytes = 5 * kMiB + 123;
  at::Tensor t = EmptyOnHugePages(bytes);
  ASSERT_EQ(t.numel(), bytes);
  EXPECT_EQ(t.scalar_type(), at::kByte);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data_ptr()) % (2 * kMiB), 0u);
  // Every byte writable and kept, the last ones included.
  t.copy_(at::arange(bytes, at::kLong).remainder(251).to(at::kByte));
  EXPECT_EQ(t[bytes - 1].item<int>(), static_cast<int>((bytes - 1) % 251));
  EXPECT_TRUE(t.equal(at::arange(bytes, at::kLong).remainder(251).to(at::kByte)));
}

TEST(HugePagesTest, MappingIsAdvisedForHugePages) {
  const std::string mode = TransparentHugePageMode();
  if (mode.find("[never]") != std::string::npos || mode.empty()) {
    GTEST_SKIP() << "transparent huge pages are off here: " << mode;
  }
  at::Tensor t = EmptyOnHugePages(4 * kMiB);
  const auto flags = VmFlagsAt(reinterpret_cast<uintptr_t>(t.data_ptr()));
  ASSERT_TRUE(flags.has_value());
  EXPECT_NE(flags->find(" hg"), std::string::npos) << *flags;  // MADV_HUGEPAGE
}

TEST(HugePagesTest, MappingGoesWithItsLastTensor) {
  uintptr_t address = 0;
  {
    at::Tensor t = EmptyOnHugePages(3 * kMiB);
    address = reinterpret_cast<uintptr_t>(t.data_ptr());
    at::Tensor view = t.narrow(0, kMiB, kMiB);
    t = at::Tensor();
    ASSERT_TRUE(VmFlagsAt(address).has_value()) << "unmapped while a view still used it";
    view.fill_(7);
  }
  EXPECT_FALSE(VmFlagsAt(address).has_value());
}

TEST(HugePagesTest, SmallAndEmptyTensorsNeedNoMapping) {
  EXPECT_EQ(EmptyOnHugePages(0).numel(), 0);
  at::Tensor small = EmptyOnHugePages(1000);
  EXPECT_EQ(small.numel(), 1000);
  small.fill_(3);
  EXPECT_EQ(small.sum().item<int64_t>(), 3000);
  EXPECT_THROW(EmptyOnHugePages(-1), c10::Error);
}

}  // namespace
}  // namespace anoclip::model
