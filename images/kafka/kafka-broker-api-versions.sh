#!/bin/bash
# The official image's health-check command, at the same path (/opt/kafka/bin): asks the broker
# for its API versions over the Kafka protocol; exits non-zero when it does not answer.
exec java -Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
  -Dlog4j2.configurationFile=/opt/kafka/config/tools-log4j2.properties \
  -cp '/opt/kafka/libs/*' org.apache.kafka.tools.BrokerApiVersionsCommand "$@"
