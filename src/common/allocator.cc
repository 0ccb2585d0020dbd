#include "common/allocator.h"

#include <malloc.h>

namespace anoclip {

void ReuseFreedMemory() {
  mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
  mallopt(M_TRIM_THRESHOLD, 1024 * 1024 * 1024);
}

}  // namespace anoclip
