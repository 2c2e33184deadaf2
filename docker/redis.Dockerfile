# Redis for the compose stack's shared session store, without a registry:
# Debian's redis-server binary and the shared libraries it loads (copied by
# docker/build.sh from the host's redis-server package, as `ldd` lists
# them), FROM scratch. No persistence: sessions are demo data.
FROM scratch
COPY . /
USER 999:999
WORKDIR /data
EXPOSE 6379
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/redis-server"]
CMD ["--bind", "0.0.0.0", "--port", "6379", "--protected-mode", "no", "--save", "", "--appendonly", "no"]
LABEL org.opencontainers.image.title="unstick-redis" \
      org.opencontainers.image.description="Debian's redis-server in a scratch image, for the unstick compose demo."
