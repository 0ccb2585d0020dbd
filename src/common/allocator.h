// The C allocator set for tensor-sized blocks, once at the start of each program.
#pragma once

namespace anoclip {

// glibc gives every block above M_MMAP_THRESHOLD (128 KiB, raised only as such blocks are
// freed) its own mapping, unmapped again on free; returns a heap's free top above
// M_TRIM_THRESHOLD to the kernel; and unmaps a thread arena's 64 MiB heap as soon as it is wholly
// free. A forward's activations (up to 26 MB each at batch 8) then arrive as fresh pages the
// kernel must fault in and zero, every call: a ViT-B's largest batch-8 product ran at 0.75 of its
// rate through OpenBLAS and 0.22 through oneDNN (docs/performance.md). This keeps blocks up to
// 32 MiB (glibc's largest threshold) in one arena, the main one, and its free memory in the
// process for the next forward; the peak stays what the work needs, and the server's
// malloc_trim calls (after loading, after text builds, when idle) hand back what was freed.
void ReuseFreedMemory();

}  // namespace anoclip
