#!/bin/bash
# A single Apache Kafka node in KRaft mode, configured from the environment in the style of the
# official apache/kafka image, so docker-compose.yml and the tests can run either image:
#   KAFKA_FOO_BAR=x     -> foo.bar=x       (one underscore: a dot)
#   KAFKA_FOO__BAR=x    -> foo_bar=x       (two: an underscore)
#   KAFKA_FOO___BAR=x   -> foo-bar=x       (three: a dash)
# (values must be single lines). KAFKA_HEAP_OPTS and KAFKA_OPTS go to the JVM; KAFKA_HEALTHCHECK_BOOTSTRAP
# is where the health check connects (default localhost:9092); CLUSTER_ID names the cluster when the log directory
# is formatted (once: a restarted container keeps its data). SCRAM_SHA_512_USERS="alice:pw1 bob:pw2" creates
# those SCRAM-SHA-512 users at that format (for a SASL_SSL listener configured with KAFKA_* as above;
# names and passwords of letters, digits and ._~@+-). Java runs as PID 1 and shuts the broker down
# cleanly on SIGTERM.
set -euo pipefail

config=/var/lib/kafka/server.properties
data="${KAFKA_LOG_DIRS:-/var/lib/kafka/data}"
mkdir -p "$data"
{
  echo "log.dirs=$data"
  while IFS='=' read -r name _; do
    case "$name" in
      # Not broker properties: the JVM's, this script's, and those the official image skips too.
      KAFKA_HEAP_OPTS | KAFKA_OPTS | KAFKA_LOG_DIRS | KAFKA_HEALTHCHECK_BOOTSTRAP | KAFKA_VERSION) continue ;;
      KAFKA_LOG4J_* | KAFKA_JMX_*) continue ;;
      KAFKA_*) ;;
      *) continue ;;
    esac
    key="${name#KAFKA_}"
    key="${key,,}"
    key="${key//___/-}"
    key="${key//__/@}"
    key="${key//_/.}"
    key="${key//@/_}"
    echo "$key=${!name}"
  done < <(env)
} > "$config"

if [ ! -f "$data/meta.properties" ]; then
  scram=()
  for user in ${SCRAM_SHA_512_USERS:-}; do
    scram+=(--add-scram "SCRAM-SHA-512=[name=${user%%:*},password=${user#*:}]")
  done
  java -cp '/opt/kafka/libs/*' -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties \
    kafka.tools.StorageTool format --cluster-id="${CLUSTER_ID:-5L6g3nShT-eMCtK--X86sw}" -c "$config" \
    "${scram[@]}" >/dev/null
fi

# shellcheck disable=SC2086  # the option strings are meant to split into arguments
exec java ${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m} -XX:+UseSerialGC ${KAFKA_OPTS:-} -Djava.awt.headless=true \
  -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties \
  -cp '/opt/kafka/libs/*' kafka.Kafka "$config"
