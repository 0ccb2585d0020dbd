#include "server/openmp_threads.h"

#include <ATen/Parallel.h>
#include <omp.h>

namespace anoclip::server {

void RunTorchSeriallyOnThisThread() {
  // libtorch sets a thread's OpenMP thread count on its first parallel call; do that now, so that
  // it does not undo the count set here.
  at::internal::lazy_init_num_threads();
  omp_set_num_threads(1);
}

void ReleaseOpenMpTeam() { omp_pause_resource(omp_pause_soft, omp_get_initial_device()); }

}  // namespace anoclip::server
