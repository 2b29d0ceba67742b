# tcplb in a container: built with cargo, run from a small non-root image.
#
#   docker build -t registry.example.com/tcplb:0.1.0 .
#   docker run --rm -p 8080:8080 registry.example.com/tcplb:0.1.0 --listen 0.0.0.0:8080 HOST:PORT
#
# deploy/kubernetes/deployment.yaml runs this image. (Not built in this project's CI: it
# has no container engine or registry; see README, "Running more than one".)

# Build: the README's own command, in the Rust image of the same Debian release as the
# run image below (glibc 2.36), so the dynamically linked binary runs there as is.
FROM docker.io/library/rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release

# Run: distroless "cc" = glibc + libgcc and nothing else (no shell, no package manager),
# as its "nonroot" user (65532). tcplb writes no files, so a read-only root filesystem
# works.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/tcplb /usr/local/bin/tcplb
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/tcplb"]
CMD ["--help"]
