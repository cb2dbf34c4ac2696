#!/bin/sh
# One-shot setup of the log stack, idempotent:
#   setup.sh elasticsearch   the users Kibana and Logstash log in with, the index template and
#                            its retention policy (compose service elk-setup)
#   setup.sh kibana          the data view and saved searches, and the people's login: user
#                            inferbox_viewer (KIBANA_VIEWER_PASSWORD) with a role that reads the
#                            inferbox logs in Discover and dashboards, nothing else; `elastic`,
#                            the superuser, is for these steps (compose service kibana-setup)
#   ELASTICSEARCH_URL, KIBANA_URL   where they answer [http://elasticsearch:9200, http://kibana:5601/kibana]
set -eu
mode=${1:?usage: setup.sh elasticsearch|kibana}
ES=${ELASTICSEARCH_URL:-http://elasticsearch:9200}
KB=${KIBANA_URL:-http://kibana:5601/kibana}
auth="elastic:${ELASTIC_PASSWORD}"

es() { # METHOD PATH [BODY-FILE]
    if [ $# -eq 3 ]; then
        curl -fsS -u "$auth" -X "$1" "$ES$2" -H 'Content-Type: application/json' --data-binary "@$3"
    else
        curl -fsS -u "$auth" -X "$1" "$ES$2" -H 'Content-Type: application/json' --data-binary @-
    fi
    echo
}

if [ "$mode" = kibana ]; then
    : "${KIBANA_VIEWER_PASSWORD:?KIBANA_VIEWER_PASSWORD is empty: run scripts/init-env --add-missing}"
    curl -fsS -u "$auth" -X POST "$KB/api/saved_objects/_import?overwrite=true" \
        -H 'kbn-xsrf: true' --form file=@"${KIBANA_SAVED_OBJECTS:-/setup/kibana/saved-objects.ndjson}"
    echo
    # Kibana's role API (Kibana's feature privileges are managed there, not in Elasticsearch's).
    curl -fsS -u "$auth" -X PUT "$KB/api/security/role/inferbox_logs_reader" \
        -H 'kbn-xsrf: true' -H 'Content-Type: application/json' --data-binary @- <<JSON
{"elasticsearch": {"cluster": [],
  "indices": [{"names": ["logs-inferbox-*"], "privileges": ["read", "view_index_metadata"]}]},
 "kibana": [{"base": [], "feature": {"discover": ["read"], "dashboard": ["read"], "visualize": ["read"]},
  "spaces": ["default"]}]}
JSON
    echo
    es PUT /_security/user/inferbox_viewer <<JSON
{"password": "${KIBANA_VIEWER_PASSWORD}", "roles": ["inferbox_logs_reader"],
 "full_name": "inferbox logs (read only)"}
JSON
    exit 0
fi

echo "{\"password\": \"${KIBANA_SYSTEM_PASSWORD}\"}" | es POST /_security/user/kibana_system/_password
es PUT /_security/role/logstash_writer <<JSON
{"cluster": ["monitor", "manage_index_templates", "manage_ilm"],
 "indices": [{"names": ["logs-inferbox-*"], "privileges": ["create_doc", "create_index", "auto_configure", "view_index_metadata"]}]}
JSON
es PUT /_security/user/logstash_internal <<JSON
{"password": "${LOGSTASH_INTERNAL_PASSWORD}", "roles": ["logstash_writer"]}
JSON
es PUT /_ilm/policy/inferbox-logs /setup/elasticsearch/ilm-policy.json
es PUT /_index_template/inferbox-logs /setup/elasticsearch/index-template.json

