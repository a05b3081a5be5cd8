# lpworker for CPU-only nodes: the FFmpeg/libx264 backend and ONNX Runtime.
# docker build -t lpworker:cpu .

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      clang libclang-dev pkg-config protobuf-compiler \
      libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev libavfilter-dev libavdevice-dev \
      python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
 && strip target/release/lpworker
# ONNX Runtime's shared library, from the same PyPI wheel the tests use.
RUN pip3 install --no-cache-dir --break-system-packages --target /opt/ort onnxruntime==1.32.0 \
 && cp /opt/ort/onnxruntime/capi/libonnxruntime.so.* /usr/local/lib/libonnxruntime.so

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 libavfilter8 libavdevice59 \
      ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /var/lib/lpworker --create-home lpworker
COPY --from=build /src/target/release/lpworker /usr/local/bin/lpworker
COPY --from=build /usr/local/lib/libonnxruntime.so /usr/local/lib/libonnxruntime.so
ENV ORT_DYLIB_PATH=/usr/local/lib/libonnxruntime.so
USER 10001:10001
WORKDIR /var/lib/lpworker
# gRPC worker, Prometheus metrics, ai-runner HTTP API.
EXPOSE 50051 9095 8000
HEALTHCHECK --interval=10s --timeout=4s --start-period=20s --retries=3 \
  CMD ["lpworker", "health", "--addr", "127.0.0.1:50051"]
ENTRYPOINT ["lpworker"]
CMD ["serve", "--addr", "0.0.0.0:50051", "--metrics-addr", "0.0.0.0:9095"]
