//! Pitfall analysis of pods, workloads and Services.
