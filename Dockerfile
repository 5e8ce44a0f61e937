# syntax=docker/dockerfile:1
# eventgw: one static binary on distroless, running as nonroot (65532).
#   docker build -t ghcr.io/eventgw/eventgw:0.1.0 .
# The same image runs the sidecar (`serve`, the default), the Kubernetes webhook
# (`inject`) and the embedded dev stack (`devstack`; it needs PostgreSQL's initdb, which
# this image does not have: use it on a workstation).

FROM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/go/pkg/mod go mod download
COPY . .
# CGO off: a static binary that needs no libc in the final image.
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags="-s -w" -o /out/eventgw ./cmd/eventgw

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/eventgw /eventgw
USER 65532:65532
# gRPC, and HTTP (/metrics, /healthz, /readyz). Both listen on loopback unless told
# otherwise (--grpc-addr, --http-addr).
EXPOSE 50051 9090
ENTRYPOINT ["/eventgw"]
CMD ["serve"]
