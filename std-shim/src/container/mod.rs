//! In containers: the memory limit taken from the cgroup ([`cgroup`]) and reclaim on the
//! kernel's memory-pressure signal ([`pressure`]). Linux only in what they read; elsewhere the
//! files are missing and both say so.

pub mod cgroup;
pub(crate) mod fs;
pub mod pressure;
