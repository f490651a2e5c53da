//! GroupNorm kernel for the CPU backend (unfinished: being written).
