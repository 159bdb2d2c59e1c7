# Stand-in for postgres:<major> where no registry can be reached: Debian's PostgreSQL with the
# official image's contract (POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB make the cluster in
# PGDATA on first start; arguments go to postgres; pg_isready on PATH).
FROM fraud-standin/debian:bookworm
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint /usr/local/bin/postgres-entrypoint
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/postgres-entrypoint"]
CMD ["postgres"]
