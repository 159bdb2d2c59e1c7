# Stand-in for redis:<version> where no registry can be reached: Debian's Redis server, run as the
# redis user with the official image's defaults (no config file; redis-cli on PATH).
FROM fraud-standin/debian:bookworm
USER redis
WORKDIR /var/lib/redis
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["redis-server"]
