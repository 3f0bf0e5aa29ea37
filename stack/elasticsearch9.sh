#!/usr/bin/env bash
# Elasticsearch 9.x beside the 8.x of stack/elasticsearch.sh: the same script, with its own version,
# name (pid file, logs, data and state dirs: .stack/*/elasticsearch9), ports and env variable.
# Usage: stack/elasticsearch9.sh install|start|wait|stop|status|env   (ES9_VERSION, ES9_JAVA_HOME,
# ES9_JAVA_OPTS override the version, JDK and heap of this instance only.)
# 9.5.3: the newest 9.x whose server jar and transport-netty4 module are both on Maven Central.
export ES_NAME=elasticsearch9 ES_VERSION="${ES9_VERSION:-9.5.3}" ES_PORT=9201 ES_TRANSPORT_PORT=9301 \
  ES_CLUSTER=kubevents9 ES_ENV_VAR=KUBEVENTS_TEST_ELASTICSEARCH9_URL
if [[ -n "${ES9_JAVA_HOME:-}" ]]; then export ES_JAVA_HOME="$ES9_JAVA_HOME"; else unset ES_JAVA_HOME; fi
if [[ -n "${ES9_JAVA_OPTS:-}" ]]; then export ES_JAVA_OPTS="$ES9_JAVA_OPTS"; else unset ES_JAVA_OPTS; fi
exec "$(dirname "$0")/elasticsearch.sh" "$@"
