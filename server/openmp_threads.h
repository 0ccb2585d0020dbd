// OpenMP teams outside the engine's thread. libgomp spins at its barriers for about 300,000
// iterations, but for only 100 once the process holds more OpenMP threads than the machine has
// CPUs, counting every team's threads, busy or idle. The engine's forwards run hundreds of
// parallel regions each: with their threads sleeping and waking at every one, a batch-1 forward
// in the server took 1.1x the offline one (docs/performance.md). So the threads that are not the
// engine's start no team of their own, or hand theirs back when done.
#pragma once

namespace anoclip::server {

// This thread's libtorch work runs on it alone, without an OpenMP team: decode, preprocessing and
// post-processing, whose tensors are small.
void RunTorchSeriallyOnThisThread();

// Ends this thread's OpenMP team, if it has one: its idle threads exit. For work that needs the
// cores now and then (a text build), after each run.
void ReleaseOpenMpTeam();

}  // namespace anoclip::server
