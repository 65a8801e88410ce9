# The image's configuration, in Dockerfile syntax: deploy/Dockerfile's runtime stage has each of
# these lines verbatim, and scripts/build-image.sh passes each to `podman import --change`.
# The controller and operator run as 10001 (chart securityContext); the agent runs as root with
# NET_ADMIN/NET_RAW (and /dev/net/tun for the userspace data plane).
ENV PATH=/opt/meshsec/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENV PYTHONDONTWRITEBYTECODE=1
ENV PYTHONUNBUFFERED=1
WORKDIR /
USER 10001
ENTRYPOINT []
CMD ["meshsec-controller", "--help"]
