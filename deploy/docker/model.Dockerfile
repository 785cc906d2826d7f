# The model for compose.yml: the Azure ML inference server (azmlinfsrv, PyPI
# azureml-inference-server-http) running the iris entry script of the end-to-end test.
# Replace score.py (and the pip line, for your model's packages) with your own.
#
# azmlinfsrv binds 0.0.0.0:5001 and answers anyone who reaches it, without authentication:
# compose.yml puts it on an internal network that only the gateway joins, and publishes no port.
FROM python:3.11-slim

# The version the gateway's end-to-end test runs against (scripts/azureml-venv.sh).
RUN pip install --no-cache-dir --disable-pip-version-check azureml-inference-server-http==1.5.1

RUN useradd --system --uid 10002 --no-create-home --shell /usr/sbin/nologin model
COPY tests/azureml/score.py /var/azureml-app/score.py
USER 10002:10002
WORKDIR /var/azureml-app
EXPOSE 5001

HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5001/', timeout=2)"]

CMD ["azmlinfsrv", "--entry_script", "/var/azureml-app/score.py", "--port", "5001"]
