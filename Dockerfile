# A search worker: the project installed on a CUDA PyTorch image. Build: docker compose build
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

WORKDIR /app
COPY pyproject.toml README.md ./
COPY search ./search
COPY training ./training
COPY studies ./studies
RUN pip install --no-cache-dir -e '.[postgres]'

# Decoded images and the inductor cache persist in this volume, shared by the workers.
ENV SEARCH_CACHE_DIR=/cache \
    SEARCH_ARTIFACTS=/artifacts
ENTRYPOINT ["search"]
CMD ["run", "--study", "lr-sweep"]
