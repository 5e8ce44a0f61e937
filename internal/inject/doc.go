// Package inject is eventgw's mutating admission webhook. It adds the sidecar to pods
// annotated eventgw.io/inject: "true", the way Dapr and Istio add theirs:
//
//   - as a native sidecar: the first initContainer, with restartPolicy Always. The
//     kubelet starts the pod's other containers once its startup probe passes (so an
//     app never starts before its gateway is up) and stops it after them.
//   - with startup and liveness probes on /healthz (200 while the process runs, also
//     when a dependency is down, so Kubernetes does not restart it for Kafka's sake)
//     and a readiness probe on /readyz (200 ready or degraded; 503 only when neither
//     Kafka nor PostgreSQL answers, and then the pod leaves its Services).
//   - non-root, read-only root filesystem, no capabilities, no privilege escalation.
//   - gRPC on a unix socket in an emptyDir that every other container mounts, with its
//     path in EVENTGW_SOCKET.
//
// Per-pod settings come from eventgw.io/* annotations (see Annotations); the connection
// settings (brokers, registry, database) from a ConfigMap and a Secret in the pod's
// namespace. A pod that already has the sidecar is left alone, so injection is
// idempotent. A bad annotation value, or a pod the sidecar would clash with (a port,
// volume or mount of its own), is refused with a message naming it: the webhook never
// admits a pod it could not inject correctly.
//
// The sidecar's command line is checked against the `eventgw serve` flags of this
// build before a pod is admitted, so an option the sidecar image would not understand
// (say a tenant allow-list on a build without --tenants) refuses the pod instead of
// producing one that crash-loops. Keep the sidecar image at the webhook's version.
package inject
