# tcplb in a container: built with cargo, run from a small non-root image.
#
#   docker build -t registry.example.com/tcplb:0.1.0 .
#   docker run --rm -p 8080:8080 registry.example.com/tcplb:0.1.0 --listen 0.0.0.0:8080 HOST:PORT
#
# deploy/kubernetes/deployment.yaml runs this image. (Not built in this project's CI: it
# has no container engine or registry; see docs/operations.md, "On Kubernetes".)
#
# Base images. The Rust image is pinned to an exact release (the toolchain this project is
# tested with), not a floating tag. Neither is pinned by digest here: the digests could not
# be looked up and checked where this file was written (no registry access), and a digest
# copied unchecked is worse than none. Pin them where you build, from the registry itself:
#   docker buildx imagetools inspect docker.io/library/rust:1.95.0-bookworm
#   docker buildx imagetools inspect gcr.io/distroless/cc-debian12:nonroot
# and pass the results (a `@sha256:...` suffix) without editing this file:
#   docker build --build-arg BUILD_IMAGE=docker.io/library/rust:1.95.0-bookworm@sha256:... \
#                --build-arg RUN_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:... .
# (distroless publishes no version tags: its digest is the only fixed name it has.)
ARG BUILD_IMAGE=docker.io/library/rust:1.95.0-bookworm
ARG RUN_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# Build: the README's own command, with --locked (exactly the dependency versions of
# Cargo.lock, or fail), in the Rust image of the same Debian release as the run image below
# (glibc 2.36), so the dynamically linked binary runs there as is.
FROM ${BUILD_IMAGE} AS build
WORKDIR /src
# The dependencies first, in a layer of their own, built against placeholder sources: it
# is rebuilt only when Cargo.toml or Cargo.lock change, not on every change to tcplb's code.
# (Cargo.toml names the benchmark target, so it needs a placeholder too.)
COPY Cargo.toml Cargo.lock ./
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    mkdir -p src benches \
    && echo 'fn main() {}' >src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' >benches/hot_paths.rs \
    && cargo build --locked --release \
    && rm -rf src benches
# Then tcplb itself. The copied sources keep their own timestamps, which may be older than
# the placeholders' build: touched, so cargo rebuilds tcplb instead of keeping the
# placeholder binary.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    touch src/main.rs src/lib.rs \
    && cargo build --locked --release

# Run: distroless "cc" = glibc + libgcc and nothing else (no shell, no package manager),
# as its "nonroot" user (65532). tcplb writes no files, so a read-only root filesystem
# works.
FROM ${RUN_IMAGE}
COPY --from=build /src/target/release/tcplb /usr/local/bin/tcplb
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/tcplb"]
CMD ["--help"]
