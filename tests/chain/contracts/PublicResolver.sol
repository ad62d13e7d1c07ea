// SPDX-License-Identifier: MIT
// A minimal public resolver: ETH address (addr), multi-coin address and text records, with
// ERC-165 supportsInterface. The name's registry owner may set records, or its NameWrapper
// owner when the name is wrapped. Test chain only.
pragma solidity ^0.8.20;

interface IENS {
    function owner(bytes32 node) external view returns (address);
}

interface IWrapper {
    function ownerOf(uint256 id) external view returns (address);
}

contract PublicResolver {
    IENS public immutable ens;
    IWrapper public immutable nameWrapper;
    uint256 private constant COIN_TYPE_ETH = 60;

    mapping(bytes32 => mapping(uint256 => bytes)) private addresses;
    mapping(bytes32 => mapping(string => string)) private texts;

    event AddrChanged(bytes32 indexed node, address a);
    event AddressChanged(bytes32 indexed node, uint256 coinType, bytes newAddress);
    event TextChanged(bytes32 indexed node, string indexed indexedKey, string key, string value);

    constructor(IENS ens_, IWrapper nameWrapper_) {
        ens = ens_;
        nameWrapper = nameWrapper_;
    }

    modifier authorised(bytes32 node) {
        address owner = ens.owner(node);
        if (owner == address(nameWrapper)) {
            owner = nameWrapper.ownerOf(uint256(node));
        }
        require(owner == msg.sender, "PublicResolver: not authorised");
        _;
    }

    function setAddr(bytes32 node, address a) external authorised(node) {
        addresses[node][COIN_TYPE_ETH] = abi.encodePacked(a);
        emit AddrChanged(node, a);
        emit AddressChanged(node, COIN_TYPE_ETH, abi.encodePacked(a));
    }

    function setAddr(bytes32 node, uint256 coinType, bytes calldata a) external authorised(node) {
        addresses[node][coinType] = a;
        emit AddressChanged(node, coinType, a);
        if (coinType == COIN_TYPE_ETH) {
            emit AddrChanged(node, address(bytes20(a)));
        }
    }

    function setText(bytes32 node, string calldata key, string calldata value)
        external authorised(node)
    {
        texts[node][key] = value;
        emit TextChanged(node, key, key, value);
    }

    function addr(bytes32 node) external view returns (address payable) {
        bytes memory a = addresses[node][COIN_TYPE_ETH];
        if (a.length == 0) {
            return payable(address(0));
        }
        return payable(address(bytes20(a)));
    }

    function addr(bytes32 node, uint256 coinType) external view returns (bytes memory) {
        return addresses[node][coinType];
    }

    function text(bytes32 node, string calldata key) external view returns (string memory) {
        return texts[node][key];
    }

    function supportsInterface(bytes4 interfaceId) external pure returns (bool) {
        return interfaceId == 0x01ffc9a7  // ERC-165
            || interfaceId == 0x3b3b57de  // addr(bytes32)
            || interfaceId == 0xf1cb7e06  // addr(bytes32,uint256)
            || interfaceId == 0x59d1d43c; // text(bytes32,string)
    }
}
