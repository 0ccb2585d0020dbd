#include "model/huge_pages.h"

#include <ATen/ATen.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>

namespace anoclip::model {
namespace {

constexpr uintptr_t kHugePage = uintptr_t{2} << 20;

uintptr_t RoundUp(uintptr_t value, uintptr_t to) { return (value + to - 1) / to * to; }

}  // namespace

at::Tensor EmptyOnHugePages(int64_t bytes) {
  TORCH_CHECK(bytes >= 0, "a tensor of ", bytes, " bytes");
  const auto options = at::TensorOptions().dtype(at::kByte);
  if (bytes < static_cast<int64_t>(kHugePage)) return at::empty({bytes}, options);  // not one huge page
  // Map a huge page more than needed, then give back what lies before the first 2 MiB boundary
  // and after the tensor's last page.
  const uintptr_t length = RoundUp(static_cast<uintptr_t>(bytes), static_cast<uintptr_t>(sysconf(_SC_PAGESIZE)));
  void* mapped = mmap(nullptr, length + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped == MAP_FAILED) return at::empty({bytes}, options);
  const uintptr_t begin = reinterpret_cast<uintptr_t>(mapped), aligned = RoundUp(begin, kHugePage);
  if (aligned > begin) munmap(mapped, aligned - begin);
  const uintptr_t end = begin + length + kHugePage;
  if (end > aligned + length) munmap(reinterpret_cast<void*>(aligned + length), end - aligned - length);
  void* data = reinterpret_cast<void*>(aligned);
  // Refused where the kernel has no transparent huge pages: the memory stays on small pages.
  (void)madvise(data, length, MADV_HUGEPAGE);
  return at::from_blob(
      data, {bytes}, [length](void* p) { munmap(p, length); }, options);
}

}  // namespace anoclip::model
