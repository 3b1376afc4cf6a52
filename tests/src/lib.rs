//! Test harness: namespaces, netpath instances and servers with RAII cleanup.
