"""The corpus's plain torch.nn families (tests/models.py builds and exports them): ResNet-18 in
torchvision's layout, VGG, Inception blocks, DenseNet blocks, SqueezeNet fire modules and
ShuffleNet v2, at the sizes tests/models.py asks for."""

from __future__ import annotations


def torch_modules() -> dict:
    """Module classes, defined lazily so importing this file does not import torch."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    def conv_bn(cin, cout, k, s=1, p=None, groups=1, act=True):
        p = k // 2 if p is None else p
        layers = [nn.Conv2d(cin, cout, k, s, p, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        return nn.Sequential(*layers)

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                nn.BatchNorm2d(cout))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    class ResNet18(nn.Module):
        """torchvision's resnet18 layout: 7x7/2 stem, 3x3/2 max pool, 4 stages of 2 basic
        blocks, global average pool, fully connected classifier."""

        def __init__(self, width=64, num_classes=1000):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            chans = [width, 2 * width, 4 * width, 8 * width]
            layers, cin = [], width
            for i, c in enumerate(chans):
                stride = 1 if i == 0 else 2
                layers.append(nn.Sequential(BasicBlock(cin, c, stride), BasicBlock(c, c, 1)))
                cin = c
            self.layer1, self.layer2, self.layer3, self.layer4 = layers
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(cin, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = torch.flatten(self.avgpool(x), 1)
            return self.fc(x)

    class VGGish(nn.Module):
        """VGG-11 layout at reduced width: conv3x3+ReLU stacks, 2x2 max pools, flatten, a
        three-layer classifier with dropout."""

        def __init__(self, width=16, num_classes=10, image=32):
            super().__init__()
            cfg = [width, "M", 2 * width, "M", 4 * width, 4 * width, "M", 8 * width, 8 * width,
                   "M"]
            layers, cin = [], 3
            for v in cfg:
                if v == "M":
                    layers.append(nn.MaxPool2d(2, 2))
                else:
                    layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                    cin = v
            self.features = nn.Sequential(*layers)
            side = image // 16
            self.classifier = nn.Sequential(
                nn.Linear(cin * side * side, 64), nn.ReLU(True), nn.Dropout(),
                nn.Linear(64, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, num_classes))

        def forward(self, x):
            x = self.features(x)
            x = x.view(x.size(0), -1)
            return self.classifier(x)

    class InceptionA(nn.Module):
        """Inception-v3 'A' block: 1x1, 1x1->5x5, 1x1->3x3->3x3, avgpool(3,1,1)->1x1 branches
        concatenated along channels."""

        def __init__(self, cin, pool_features):
            super().__init__()
            self.b1 = conv_bn(cin, 16, 1)
            self.b5 = nn.Sequential(conv_bn(cin, 12, 1), conv_bn(12, 16, 5))
            self.b3 = nn.Sequential(conv_bn(cin, 16, 1), conv_bn(16, 24, 3), conv_bn(24, 24, 3))
            self.bp = conv_bn(cin, pool_features, 1)

        def forward(self, x):
            bp = self.bp(F.avg_pool2d(x, 3, 1, 1))
            return torch.cat([self.b1(x), self.b5(x), self.b3(x), bp], 1)

    class InceptionV1Block(nn.Module):
        """GoogLeNet block: branches including a 3x3 max pool -> 1x1 projection."""

        def __init__(self, cin):
            super().__init__()
            self.b1 = nn.Sequential(nn.Conv2d(cin, 16, 1), nn.ReLU(True))
            self.b2 = nn.Sequential(nn.Conv2d(cin, 16, 1), nn.ReLU(True),
                                    nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(True))
            self.b3 = nn.Sequential(nn.Conv2d(cin, 4, 1), nn.ReLU(True),
                                    nn.Conv2d(4, 8, 5, padding=2), nn.ReLU(True))
            self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True),
                                    nn.Conv2d(cin, 8, 1), nn.ReLU(True))

        def forward(self, x):
            return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)

    class InceptionNet(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.stem = nn.Sequential(conv_bn(3, 32, 3, 2), nn.MaxPool2d(3, 2, ceil_mode=True))
            self.a = InceptionA(32, 16)   # -> 72 channels
            self.v1 = InceptionV1Block(72)  # -> 56 channels
            self.fc = nn.Linear(56, num_classes)

        def forward(self, x):
            x = self.v1(self.a(self.stem(x)))
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
            return self.fc(x)

    class DenseLayer(nn.Module):
        def __init__(self, cin, growth, bn_size=2):
            super().__init__()
            self.norm1 = nn.BatchNorm2d(cin)
            self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
            self.norm2 = nn.BatchNorm2d(bn_size * growth)
            self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

        def forward(self, feats):
            x = torch.cat(feats, 1)
            x = self.conv1(F.relu(self.norm1(x)))
            return self.conv2(F.relu(self.norm2(x)))

    class DenseBlock(nn.Module):
        def __init__(self, n, cin, growth):
            super().__init__()
            self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth) for i in range(n))

        def forward(self, x):
            feats = [x]
            for layer in self.layers:
                feats.append(layer(feats))
            return torch.cat(feats, 1)

    class DenseNetTiny(nn.Module):
        """DenseNet-121 building blocks: dense blocks (BN-ReLU-1x1-BN-ReLU-3x3, concatenated
        features) and a transition (BN-ReLU-1x1, 2x2 average pool)."""

        def __init__(self, growth=8, num_classes=10):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 7, 2, 3, bias=False), nn.BatchNorm2d(16),
                                      nn.ReLU(True), nn.MaxPool2d(3, 2, 1))
            self.block1 = DenseBlock(3, 16, growth)
            c = 16 + 3 * growth
            self.trans = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(True),
                                       nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2, 2))
            self.block2 = DenseBlock(3, c // 2, growth)
            c = c // 2 + 3 * growth
            self.norm = nn.BatchNorm2d(c)
            self.fc = nn.Linear(c, num_classes)

        def forward(self, x):
            x = self.block2(self.trans(self.block1(self.stem(x))))
            x = F.relu(self.norm(x))
            x = F.adaptive_avg_pool2d(x, (1, 1))
            return self.fc(torch.flatten(x, 1))

    class Fire(nn.Module):
        def __init__(self, cin, squeeze, e1, e3):
            super().__init__()
            self.squeeze = nn.Conv2d(cin, squeeze, 1)
            self.expand1x1 = nn.Conv2d(squeeze, e1, 1)
            self.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)

        def forward(self, x):
            x = F.relu(self.squeeze(x))
            return torch.cat([F.relu(self.expand1x1(x)), F.relu(self.expand3x3(x))], 1)

    class SqueezeNet(nn.Module):
        """SqueezeNet 1.1 layout at reduced width: fire modules, ceil-mode max pools, a 1x1
        conv classifier, global average pool."""

        def __init__(self, num_classes=10):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 32, 3, 2), nn.ReLU(True), nn.MaxPool2d(3, 2, ceil_mode=True),
                Fire(32, 8, 16, 16), Fire(32, 8, 16, 16), nn.MaxPool2d(3, 2, ceil_mode=True),
                Fire(32, 16, 32, 32), Fire(64, 16, 32, 32))
            self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(64, num_classes, 1),
                                            nn.ReLU(True), nn.AdaptiveAvgPool2d((1, 1)))

        def forward(self, x):
            return torch.flatten(self.classifier(self.features(x)), 1)

    def channel_shuffle(x, groups: int):
        b, c, h, w = x.size()
        x = x.view(b, groups, c // groups, h, w)
        x = torch.transpose(x, 1, 2).contiguous()
        return x.view(b, -1, h, w)

    class ShuffleUnit(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.stride = stride
            bf = cout // 2
            if stride > 1:
                self.branch1 = nn.Sequential(
                    nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
                    nn.BatchNorm2d(cin), nn.Conv2d(cin, bf, 1, bias=False), nn.BatchNorm2d(bf),
                    nn.ReLU(True))
            else:
                self.branch1 = nn.Sequential()
            c2 = cin if stride > 1 else bf
            self.branch2 = nn.Sequential(
                nn.Conv2d(c2, bf, 1, bias=False), nn.BatchNorm2d(bf), nn.ReLU(True),
                nn.Conv2d(bf, bf, 3, stride, 1, groups=bf, bias=False), nn.BatchNorm2d(bf),
                nn.Conv2d(bf, bf, 1, bias=False), nn.BatchNorm2d(bf), nn.ReLU(True))

        def forward(self, x):
            if self.stride == 1:
                x1, x2 = x.chunk(2, dim=1)
                out = torch.cat((x1, self.branch2(x2)), 1)
            else:
                out = torch.cat((self.branch1(x), self.branch2(x)), 1)
            return channel_shuffle(out, 2)

    class ShuffleNetV2(nn.Module):
        """ShuffleNet v2 layout at reduced width: channel split (chunk), depthwise convs,
        channel shuffle (reshape / transpose / reshape)."""

        def __init__(self, num_classes=10):
            super().__init__()
            self.conv1 = conv_bn(3, 16, 3, 2)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.stage2 = nn.Sequential(ShuffleUnit(16, 32, 2), ShuffleUnit(32, 32, 1))
            self.stage3 = nn.Sequential(ShuffleUnit(32, 64, 2), ShuffleUnit(64, 64, 1),
                                        ShuffleUnit(64, 64, 1))
            self.conv5 = conv_bn(64, 128, 1)
            self.fc = nn.Linear(128, num_classes)

        def forward(self, x):
            x = self.stage3(self.stage2(self.maxpool(self.conv1(x))))
            x = self.conv5(x)
            x = x.mean([2, 3])
            return self.fc(x)

    return dict(ResNet18=ResNet18, VGGish=VGGish, InceptionNet=InceptionNet,
                DenseNetTiny=DenseNetTiny, SqueezeNet=SqueezeNet, ShuffleNetV2=ShuffleNetV2)
