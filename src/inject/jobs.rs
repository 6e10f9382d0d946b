//! Jobs and CronJobs: a classic sidecar keeps a Job pod from completing.
