"""The compiled cffi module (_lib, built from native/); use colo_plane.native."""
