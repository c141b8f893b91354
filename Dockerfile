FROM python:3.11-slim
WORKDIR /opt/vfence
COPY pyproject.toml README.md ./
# src/vfence links the folders below under the vfence namespace
COPY src src
COPY controller controller
COPY apps apps
COPY migrations migrations
COPY mininet_topos mininet_topos
COPY schemas schemas
RUN pip install --no-cache-dir .
EXPOSE 6653 8080
ENTRYPOINT ["vfence"]
CMD ["serve", "--api-host", "0.0.0.0"]
