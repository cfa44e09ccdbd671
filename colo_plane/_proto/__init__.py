"""Generated protobuf and gRPC code (colo_pb2*, built from proto/colo.proto)."""
