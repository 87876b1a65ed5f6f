//! Point-to-point links between two network namespaces that hold every packet for a
//! chosen delay (this kernel has no `sch_netem`, so the delay is made here).
