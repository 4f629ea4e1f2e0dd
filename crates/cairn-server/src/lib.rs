//! cairn server: REST and gRPC APIs, routing, HLC clock and metrics over the cluster layer.
