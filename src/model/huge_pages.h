// Memory for the packed weights on transparent huge pages where the kernel gives them on request
// (/sys/kernel/mm/transparent_hugepage/enabled: `madvise`, a common default, or `always`). A
// batch-1 forward streams every packed weight of the vision tower once (about 360 MB for a
// ViT-B-16-plus-240), and with 4 KiB pages each weight spans thousands of them; on 2 MiB pages the
// same forward ran a few per cent faster (docs/performance.md).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace anoclip::model {

// An uninitialised uint8 CPU tensor of `bytes` (>= 0) whose storage starts on a 2 MiB boundary
// and is advised for huge pages (madvise MADV_HUGEPAGE); the kernel backs each whole 2 MiB of it
// with one page as it is first written, where it can. Falls back to at::empty where the mapping
// cannot be made. The storage is unmapped when the last tensor on it goes.
at::Tensor EmptyOnHugePages(int64_t bytes);

}  // namespace anoclip::model
