//! Application health-probe rewriting: probes go through the agent on the status port.
