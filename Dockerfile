# syntax=docker/dockerfile:1
#
# Eddy image: eddy-node (entrypoint), eddy-coordinator and the eddy CLI on Debian 12.
#
#   docker build -t eddy:0.1.0 .
#   docker run --rm -p 7070:7070 -p 9464:9464 eddy:0.1.0 --dev     # all roles, no etcd
#
# The Helm chart (helm/eddy) runs the same image: eddy-node for the ingest and state roles,
# eddy-coordinator as the coordinator's command and eddy for `helm test`, configured through
# EDDY_* environment variables.

ARG DEBIAN_IMAGE=debian:bookworm

# ---------------------------------------------------------------------------------------
FROM ${DEBIAN_IMAGE} AS build

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates cmake make gcc libc6-dev pkg-config \
      libgrpc-dev protobuf-c-compiler libprotobuf-c-dev protobuf-compiler libleveldb-dev \
      libcjson-dev \
      libcurl4-openssl-dev libxxhash-dev libmicrohttpd-dev libcmocka-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release \
 && cmake --build build -j"$(nproc)" \
 && mkdir -p /out \
 && install -m 0755 build/eddy-node /out/eddy-node \
 && install -m 0755 "$(find build -type f -name eddy-coordinator -perm -u+x | head -n 1)" /out/eddy-coordinator \
 && install -m 0755 "$(find build -type f -name eddy -perm -u+x | head -n 1)" /out/eddy \
 && strip --strip-unneeded /out/*

# ---------------------------------------------------------------------------------------
FROM ${DEBIAN_IMAGE} AS runtime

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="eddy" \
      org.opencontainers.image.description="Eddy real-time analytics and personalization cluster" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# Runtime libraries only: the shared objects of the -dev packages used by the build.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates libgrpc29 libprotobuf-c1 libleveldb1d libcjson1 libcurl4 \
      libxxhash0 libmicrohttpd12 \
 && rm -rf /var/lib/apt/lists/*

COPY --from=build /out/ /usr/local/bin/

# Fail the build, not the pod, when a runtime library is missing.
RUN set -e; for b in eddy-node eddy-coordinator eddy; do \
      if ldd "/usr/local/bin/$b" | grep -q 'not found'; then ldd "/usr/local/bin/$b"; exit 1; fi; \
    done

# Non-root user 10001 (the Helm chart's runAsUser); /var/lib/eddy is the default data dir.
RUN groupadd --system --gid 10001 eddy \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/eddy --no-create-home \
      --shell /usr/sbin/nologin eddy \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/eddy
USER 10001:10001
WORKDIR /var/lib/eddy

# 7070 gRPC (eddy.v1.Eddy + grpc.health.v1.Health), 9464 Prometheus /metrics.
# The coordinator listens on 7071 and 9465.
EXPOSE 7070 9464
VOLUME ["/var/lib/eddy"]

# eddy-node listens on 127.0.0.1 by default, which `docker run -p 7070:7070` cannot reach:
# in the image it listens on every interface of the container. The container's network is
# its own and only the ports published with -p reach it, so plaintext is allowed
# (EDDY_INSECURE, which protected mode asks for on a non-loopback address); give
# --tls-cert/--tls-key (EDDY_TLS_*) to serve TLS instead. The Helm chart sets its own
# EDDY_LISTEN, EDDY_METRICS_LISTEN and, only without TLS, EDDY_INSECURE.
ENV EDDY_LISTEN=0.0.0.0:7070 \
    EDDY_METRICS_LISTEN=0.0.0.0:9464 \
    EDDY_INSECURE=true

# No CMD: configuration comes from EDDY_* variables (or flags given to `docker run`).
ENTRYPOINT ["eddy-node"]
