#!/bin/sh
# One-shot setup of the log stack, idempotent:
#   setup.sh elasticsearch   the users Kibana and Logstash log in with, the index template and
#                            its retention policy (compose service elk-setup)
#   setup.sh kibana          the data view and saved searches (compose service kibana-setup)
set -eu
mode=${1:?usage: setup.sh elasticsearch|kibana}
ES=http://elasticsearch:9200
KB=http://kibana:5601/kibana
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
    curl -fsS -u "$auth" -X POST "$KB/api/saved_objects/_import?overwrite=true" \
        -H 'kbn-xsrf: true' --form file=@/setup/kibana/saved-objects.ndjson
    echo
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

