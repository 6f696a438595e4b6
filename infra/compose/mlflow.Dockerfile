# MLflow tracking server for the local stack. The stock MLflow image lacks the Postgres driver and
# boto3 (S3 artifacts on MinIO), hence this small image. Same MLflow version as the ie-flow venv.
FROM python:3.11-slim

RUN pip install --no-cache-dir "mlflow==3.17.2" "psycopg2-binary==2.9.13" "boto3==1.43.117" \
 && useradd --uid 1000 --create-home mlflow

USER 1000
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
