//! HTTP reverse proxy to the active Livy server. (Stub.)
