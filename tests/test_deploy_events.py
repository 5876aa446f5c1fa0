"""deploy/events.yaml: its EventBridge pattern routes exactly the ParallelCluster image events to SQS.

Everything runs against moto in-process (``mock_aws``), independent of the moto server that
conftest.py starts for the rest of the suite. The rule patterns are taken from the template
itself (only CloudFormation pseudo parameters in ``Fn::Sub`` are resolved), never copied.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto import mock_aws

TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "deploy" / "events.yaml"
# Copies of shared/fixtures/events, so the suite runs from any checkout.
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "events"
FIXTURE_NAMES = [
    "cfn-stack-status-change.json",
    "cfn-resource-status-change.json",
    "imagebuilder-image-state-change.json",
    "ec2-ami-state-change.json",
]
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account, also the account in the fixtures
PSEUDO = {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": ACCOUNT}

WANTED = {
    ("aws.cloudformation", "CloudFormation Stack Status Change"),
    ("aws.cloudformation", "CloudFormation Resource Status Change"),
    ("aws.imagebuilder", "EC2 Image Builder Image State Change"),
    ("aws.ec2", "EC2 AMI State Change"),
}


def _template() -> dict[str, Any]:
    loaded = yaml.safe_load(TEMPLATE_PATH.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _resources_of_type(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in template["Resources"].items() if res["Type"] == resource_type}


def _resolve(node: Any) -> Any:
    """Resolve ``Fn::Sub`` over pseudo parameters; any other intrinsic in a pattern is an error."""
    if isinstance(node, list):
        return [_resolve(item) for item in node]
    if not isinstance(node, dict):
        return node
    if "Fn::Sub" in node:
        assert len(node) == 1 and isinstance(node["Fn::Sub"], str), node

        def pseudo(match: re.Match[str]) -> str:
            name = match.group(1)
            assert name in PSEUDO, f"pattern refers to {name}, not a pseudo parameter"
            return PSEUDO[name]

        return re.sub(r"\$\{([^}!]+)\}", pseudo, node["Fn::Sub"])
    for key in node:
        assert key != "Ref" and not key.startswith("Fn::"), f"unexpected intrinsic {key} in an event pattern"
    return {key: _resolve(value) for key, value in node.items()}


def _rule_patterns() -> dict[str, dict[str, Any]]:
    rules = _resources_of_type(_template(), "AWS::Events::Rule")
    assert rules, "the template defines no AWS::Events::Rule"
    return {name: _resolve(rule["Properties"]["EventPattern"]) for name, rule in rules.items()}


def _branches(pattern: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternatives of a pattern: the branches of a top-level ``$or``, else the pattern itself."""
    if "$or" in pattern:
        rest = {key: value for key, value in pattern.items() if key != "$or"}
        return [{**rest, **branch} for branch in pattern["$or"]]
    return [pattern]


def _fixture(name: str) -> dict[str, Any]:
    event = json.loads((FIXTURES / name).read_text())
    assert isinstance(event, dict)
    return event


def _entry(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "Source": event["source"],
        "DetailType": event["detail-type"],
        "Detail": json.dumps(event["detail"]),
        "Resources": event["resources"],
        "Time": event["time"],
    }


def _unrelated_events() -> dict[str, dict[str, Any]]:
    """Events the rule(s) must not forward, each a near miss of one wanted event."""
    image_builder = _fixture("imagebuilder-image-state-change.json")
    resource_change = _fixture("cfn-resource-status-change.json")
    stack_change = _fixture("cfn-stack-status-change.json")
    other_recipe = f"arn:aws:imagebuilder:{REGION}:{ACCOUNT}:image/my-team-base-image/1.0.0/1"
    other_account = "arn:aws:imagebuilder:us-east-1:210987654321:image/parallelclusterimage-custom-image-id/3.2.1/1"
    return {
        "ec2-instance-state-change": {
            "source": "aws.ec2",
            "detail-type": "EC2 Instance State-change Notification",
            "time": "2022-03-31T00:00:00Z",
            "resources": [f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-0123456789abcdef0"],
            "detail": {"instance-id": "i-0123456789abcdef0", "state": "running"},
        },
        "imagebuilder-other-image": {**image_builder, "resources": [other_recipe]},
        "imagebuilder-other-account": {**image_builder, "resources": [other_account]},
        "cfn-resource-other-logical-id": {
            **resource_change,
            "detail": {
                **resource_change["detail"],
                "logical-resource-id": "InstanceRole",
                "physical-resource-id": "custom-image-id-InstanceRole-1ABCDEF",
                "resource-type": "AWS::IAM::Role",
            },
        },
        "stack-detail-type-from-wrong-source": {**stack_change, "source": "aws.ec2"},
    }


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto in-process, with the suite's moto-server endpoint removed from the environment."""
    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_SQS",
        "AWS_ENDPOINT_URL_EVENTS",
        "AWS_ENDPOINT_URL_CLOUDFORMATION",
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield


class Routing:
    """A queue with the template's rule(s) created by PutRule, targeting it."""

    def __init__(self) -> None:
        self.events = boto3.client("events", region_name=REGION)
        self.sqs = boto3.client("sqs", region_name=REGION)
        self.queue_url = self.sqs.create_queue(QueueName="statuscache-events")["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])
        for name, pattern in _rule_patterns().items():
            self.events.put_rule(Name=name, EventPattern=json.dumps(pattern), State="ENABLED")
            self.events.put_targets(Rule=name, Targets=[{"Id": "queue", "Arn": queue_arn["Attributes"]["QueueArn"]}])

    def put(self, event: dict[str, Any]) -> str:
        answer = self.events.put_events(Entries=[_entry(event)])
        assert answer["FailedEntryCount"] == 0, answer
        event_id = answer["Entries"][0]["EventId"]
        assert isinstance(event_id, str)
        return event_id

    def drain(self) -> list[dict[str, Any]]:
        bodies: list[dict[str, Any]] = []
        while True:
            answer = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            messages = answer.get("Messages", [])
            if not messages:
                return bodies
            for message in messages:
                bodies.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])


@pytest.fixture
def routing(aws: None) -> Routing:
    return Routing()


def _assert_delivered(body: dict[str, Any], event: dict[str, Any], event_id: str) -> None:
    assert body["id"] == event_id
    assert body["source"] == event["source"]
    assert body["detail-type"] == event["detail-type"]
    assert body["detail"] == event["detail"]
    assert body["resources"] == event["resources"]
    assert body["time"] == event["time"]
    assert body["region"] == REGION


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_event_reaches_the_queue(routing: Routing, name: str) -> None:
    event = _fixture(name)
    event_id = routing.put(event)
    bodies = routing.drain()
    assert len(bodies) == 1, bodies  # one rule matches, one delivery
    _assert_delivered(bodies[0], event, event_id)


@pytest.mark.parametrize("name", sorted(_unrelated_events()))
def test_unrelated_event_does_not_reach_the_queue(routing: Routing, name: str) -> None:
    routing.put(_unrelated_events()[name])
    assert routing.drain() == []


def test_mixed_stream_keeps_exactly_the_wanted_events(routing: Routing) -> None:
    wanted: dict[str, dict[str, Any]] = {}
    for name in FIXTURE_NAMES:
        event = _fixture(name)
        wanted[routing.put(event)] = event
        routing.put(_unrelated_events()["ec2-instance-state-change"])
    for event in _unrelated_events().values():
        routing.put(event)
    bodies = routing.drain()
    assert sorted(body["id"] for body in bodies) == sorted(wanted)
    for body in bodies:
        _assert_delivered(body, wanted[body["id"]], body["id"])


def test_patterns_select_exactly_the_four_event_types() -> None:
    pairs = set()
    for pattern in _rule_patterns().values():
        for branch in _branches(pattern):
            for source in branch["source"]:
                for detail_type in branch["detail-type"]:
                    pairs.add((source, detail_type))
    assert pairs == WANTED


def test_template_structure_is_coherent() -> None:
    template = _template()
    resources = template["Resources"]
    rules = _resources_of_type(template, "AWS::Events::Rule")
    queues = _resources_of_type(template, "AWS::SQS::Queue")
    assert set(queues) == {"Queue", "DeadLetterQueue"}
    parameters = template["Parameters"]
    assert parameters["QueueName"]["Default"] == "statuscache-events"
    assert parameters["MaxReceiveCount"]["Default"] == 5

    queue = resources["Queue"]["Properties"]
    assert queue["QueueName"] == {"Ref": "QueueName"}
    assert queue["ReceiveMessageWaitTimeSeconds"] == 20
    assert queue["VisibilityTimeout"] > 20
    assert queue["SqsManagedSseEnabled"] is True
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]},
        "maxReceiveCount": {"Ref": "MaxReceiveCount"},
    }
    assert resources["DeadLetterQueue"]["Properties"]["SqsManagedSseEnabled"] is True
    assert resources["DeadLetterQueue"]["Properties"]["MessageRetentionPeriod"] > queue["MessageRetentionPeriod"]

    # Every rule is on the default bus and delivers the whole event to the queue.
    for rule in rules.values():
        properties = rule["Properties"]
        assert properties.get("EventBusName", "default") == "default"
        assert properties["State"] == "ENABLED"
        assert len(properties["Targets"]) == 1
        target = properties["Targets"][0]
        assert target["Arn"] == {"Fn::GetAtt": ["Queue", "Arn"]}
        assert not {"Input", "InputPath", "InputTransformer"} & set(target)

    # The queue policy lets EventBridge send only on behalf of exactly these rules.
    policies = list(_resources_of_type(template, "AWS::SQS::QueuePolicy").values())
    assert len(policies) == 1
    assert policies[0]["Properties"]["Queues"] == [{"Ref": "Queue"}]
    statements = policies[0]["Properties"]["PolicyDocument"]["Statement"]
    source_arns = []
    for statement in statements:
        assert statement["Effect"] == "Allow"
        assert statement["Principal"] == {"Service": "events.amazonaws.com"}
        assert statement["Action"] in ("sqs:SendMessage", ["sqs:SendMessage"])
        assert statement["Resource"] == {"Fn::GetAtt": ["Queue", "Arn"]}
        assert set(statement["Condition"]) == {"ArnEquals"}
        source_arns.append(statement["Condition"]["ArnEquals"]["aws:SourceArn"])
    assert sorted(map(json.dumps, source_arns)) == sorted(json.dumps({"Fn::GetAtt": [name, "Arn"]}) for name in rules)

    outputs = template["Outputs"]
    assert set(outputs) == {"QueueUrl", "QueueArn", "DeadLetterQueueUrl", "RuleArn"}
    assert outputs["QueueUrl"]["Value"] == {"Ref": "Queue"}
    assert outputs["QueueArn"]["Value"] == {"Fn::GetAtt": ["Queue", "Arn"]}
    assert outputs["DeadLetterQueueUrl"]["Value"] == {"Ref": "DeadLetterQueue"}
    assert outputs["RuleArn"]["Value"] in [{"Fn::GetAtt": [name, "Arn"]} for name in rules]


@pytest.mark.slow
def test_stack_created_by_moto_cloudformation_routes_events(aws: None) -> None:
    """The whole template through moto's CloudFormation: it resolves Fn::Sub itself.

    moto 5.2 has no CloudFormation model for AWS::SQS::QueuePolicy: it warns and skips that
    resource (and moto does not enforce queue policies anyway). Everything else is created.
    """
    cloudformation = boto3.client("cloudformation", region_name=REGION)
    with pytest.warns(UserWarning, match="AWS::SQS::QueuePolicy"):
        cloudformation.create_stack(
            StackName="statuscache-events",
            TemplateBody=TEMPLATE_PATH.read_text(),
            Parameters=[{"ParameterKey": "MaxReceiveCount", "ParameterValue": "7"}],
        )
    stack = cloudformation.describe_stacks(StackName="statuscache-events")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    outputs = {output["OutputKey"]: output["OutputValue"] for output in stack["Outputs"]}
    assert set(outputs) == {"QueueUrl", "QueueArn", "DeadLetterQueueUrl", "RuleArn"}

    sqs = boto3.client("sqs", region_name=REGION)
    events = boto3.client("events", region_name=REGION)
    assert outputs["QueueUrl"].endswith("/statuscache-events")
    assert outputs["DeadLetterQueueUrl"].endswith("/statuscache-events-dlq")
    attributes = sqs.get_queue_attributes(QueueUrl=outputs["QueueUrl"], AttributeNames=["All"])["Attributes"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=outputs["DeadLetterQueueUrl"], AttributeNames=["QueueArn"])
    assert attributes["QueueArn"] == outputs["QueueArn"]
    assert json.loads(attributes["RedrivePolicy"]) == {
        "deadLetterTargetArn": dlq_arn["Attributes"]["QueueArn"],
        "maxReceiveCount": 7,
    }
    assert attributes["ReceiveMessageWaitTimeSeconds"] == "20"
    assert attributes["SqsManagedSseEnabled"] == "true"

    # The rule behind the RuleArn output. (DescribeStackResource(s) would make moto re-parse the
    # unsupported QueuePolicy and warn again, so the rule is found through the output instead.)
    rule_logical_id = _template()["Outputs"]["RuleArn"]["Value"]["Fn::GetAtt"][0]
    rule = events.describe_rule(Name=outputs["RuleArn"].rsplit("/", 1)[1])
    assert rule["Arn"] == outputs["RuleArn"]
    assert json.loads(rule["EventPattern"]) == _rule_patterns()[rule_logical_id]  # moto's Fn::Sub agrees with ours
    targets = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
    assert [target["Arn"] for target in targets] == [outputs["QueueArn"]]

    wanted = {}
    for name in FIXTURE_NAMES:
        event = _fixture(name)
        answer = events.put_events(Entries=[_entry(event)])
        wanted[answer["Entries"][0]["EventId"]] = event
    events.put_events(Entries=[_entry(event) for event in _unrelated_events().values()])
    received = []
    while messages := sqs.receive_message(QueueUrl=outputs["QueueUrl"], MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
        "Messages", []
    ):
        for message in messages:
            received.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=outputs["QueueUrl"], ReceiptHandle=message["ReceiptHandle"])
    assert sorted(body["id"] for body in received) == sorted(wanted)
    for body in received:
        _assert_delivered(body, wanted[body["id"]], body["id"])
